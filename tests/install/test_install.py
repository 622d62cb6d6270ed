"""The README's "Install into an existing ComfyUI" section, run as written on a plain ComfyUI (issue 25).

What a new user has: ComfyUI 0.3.75 in a venv of its own, with CPU torch 2.13.0 and nothing but ComfyUI's
``requirements.txt``. This test builds that (the embedded, unmodified 0.3.75 tree copied to a folder of its own; the
venv cached under ``.build/install_test/`` and rebuilt whenever ComfyUI's or the pack's requirements or the README's
commands change), then runs the README's ``bash`` blocks of that section one by one, the troubleshooting fixes
included: ``git clone`` of this repository (the committed tree, HEAD: uncommitted changes are not seen) into
``custom_nodes/`` and ``pip install -r requirements.txt`` with that ComfyUI's Python. No dev extras are installed.

It then starts that ComfyUI on 127.0.0.1 with that Python, checks the CPGD nodes and templates, makes the sample
clip with the Workflows section's commands (with this suite's Python, which has scikit-image; in the plain venv
``sample`` must refuse with one line naming scikit-image and ``batch`` likewise for Ray, exit code 2) and runs
``workflows/api/cpgd_stage_one_deblur.json`` over HTTP to videos that PyAV decodes with the input's frame count,
frame rate and audio.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib

import av
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, ".build", "install_test")
VENV = os.path.join(BUILD, "venv")
VPY = os.path.join(VENV, "bin", "python")
RUN = os.path.join(BUILD, "run")  # the user's folder: ComfyUI/ is made inside it on every run
COMFY_SRC = os.environ.get("COMFYUI_PATH") or os.path.join(ROOT, ".build", "ComfyUI")
PACK = "cpgd_comfyui"
TORCH = "torch==2.13.0"  # the CPU build on this machine's disk; ComfyUI's requirements would otherwise pull CUDA
DEV_ONLY_MODULES = ("skimage", "pytest", "selenium", "ray", "skvideo", "brisque")
# Bump to force a rebuild of the cached venv when the recipe below changes.
RECIPE = "plain ComfyUI venv v1: venv, pip install torch==2.13.0, pip install -c torch -r ComfyUI/requirements.txt"


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def _bash_blocks(section: str) -> list[str]:
    """The ```bash blocks of a README section, dedented (some sit inside list items)."""
    return [textwrap.dedent(m.group(2)) for m in re.finditer(r"^( *)```bash\n(.*?)^\1```", section, re.M | re.S)]


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _sh(script: str, cwd: str, env: dict, timeout: float = 1200) -> str:
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        pytest.fail(f"command failed (rc {p.returncode}) in {cwd}:\n{script}\n--- output ---\n"
                    f"{(p.stdout + p.stderr)[-6000:]}")
    return p.stdout


def _base_python() -> str:
    return shutil.which("python3.11") or getattr(sys, "_base_executable", None) or sys.executable


def _ensure_plain_comfy_venv(stamp_inputs: str, timings: dict) -> None:
    """A venv with only CPU torch and ComfyUI 0.3.75's requirements (what the user has before this pack)."""
    stamp = os.path.join(VENV, ".stamp-" + hashlib.sha256(stamp_inputs.encode()).hexdigest()[:16])
    if os.path.isfile(stamp):
        timings["venv"] = "cached"
        return
    t0 = time.monotonic()
    shutil.rmtree(VENV, ignore_errors=True)
    env = _env()
    constraint = os.path.join(BUILD, "torch-constraint.txt")
    with open(constraint, "w") as f:
        f.write(TORCH + "\n")
    for cmd in ([_base_python(), "-m", "venv", VENV],
                [VPY, "-m", "pip", "install", "-q", TORCH],
                [VPY, "-m", "pip", "install", "-q", "-c", constraint,
                 "-r", os.path.join(COMFY_SRC, "requirements.txt")]):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if p.returncode != 0:
            shutil.rmtree(VENV, ignore_errors=True)
            pytest.fail(f"building the plain ComfyUI venv failed: {' '.join(cmd)}\n{(p.stdout + p.stderr)[-4000:]}")
    open(stamp, "w").close()
    timings["venv"] = f"built in {time.monotonic() - t0:.0f} s"


def _copy_plain_comfy(dst: str) -> None:
    """The ComfyUI tree as shipped: no custom node packs, no user data, no outputs, no caches."""
    skip_top = {"user", "output", "temp", ".git", "venv", "server.log"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        rel = os.path.relpath(folder, COMFY_SRC)
        out = {n for n in names if n == "__pycache__"}
        if rel == ".":
            out |= skip_top & set(names)
        elif rel == "custom_nodes":  # keep ComfyUI's own two files only
            out |= {n for n in names if not os.path.isfile(os.path.join(folder, n))
                    or os.path.islink(os.path.join(folder, n))}
        return out

    shutil.copytree(COMFY_SRC, dst, ignore=ignore, symlinks=True)


def test_readme_install_into_plain_comfyui(start_comfy_server):
    if not os.path.isfile(os.path.join(COMFY_SRC, "main.py")):
        pytest.fail(f"ComfyUI not found at {COMFY_SRC}: run `make setup` first")
    readme = _readme()
    install = _bash_blocks(_section(readme, "Install into an existing ComfyUI"))
    assert len(install) == 4, f"expected the install block and three troubleshooting blocks, found {len(install)}"
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        repo_url = tomllib.load(f)["project"]["urls"]["Repository"]
    clone = f"git clone {repo_url} custom_nodes/{PACK}"
    assert clone in install[0], f"the README's clone command should be `{clone}` (URL from pyproject.toml)"
    assert re.search(r"^PY=", install[0], re.M), "the install block sets PY to ComfyUI's Python"

    os.makedirs(BUILD, exist_ok=True)
    timings: dict = {}
    t_start = time.monotonic()
    with open(os.path.join(BUILD, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one run at a time uses the cached venv and the run folder
        with open(os.path.join(COMFY_SRC, "requirements.txt")) as f:
            comfy_reqs = f.read()
        with open(os.path.join(ROOT, "requirements.txt")) as f:
            pack_reqs = f.read()
        _ensure_plain_comfy_venv("\n".join([RECIPE, comfy_reqs, pack_reqs] + install), timings)

        shutil.rmtree(RUN, ignore_errors=True)
        os.makedirs(RUN)
        comfy_dir = os.path.join(RUN, "ComfyUI")
        _copy_plain_comfy(comfy_dir)
        env = dict(_env(), PY=VPY)

        # -- the README's commands, as written: PY is set (to the plain venv's Python), the URL is this repo ------
        t0 = time.monotonic()
        script = re.sub(r"^PY=.*$", "", install[0], flags=re.M).replace(clone, f"git clone {ROOT} custom_nodes/{PACK}")
        _sh(script, RUN, env)
        for fix in install[1:]:
            _sh(fix, comfy_dir, env)
        timings["readme commands"] = f"{time.monotonic() - t0:.0f} s"
        pack_dir = os.path.join(comfy_dir, "custom_nodes", PACK)
        head = subprocess.run(["git", "-C", pack_dir, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert head.strip() == subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                                              text=True).stdout.strip()

        # -- nothing of the dev extras came in -------------------------------------------------------------------
        probe = f"import importlib.util as u; print(*[m for m in {DEV_ONLY_MODULES!r} if u.find_spec(m)])"
        found = _sh(f'"$PY" -c "{probe}"', RUN, env).split()
        assert not found, f"dev-only packages in the plain ComfyUI venv: {found}"

        # -- an optional package missing: one line that names it and the install command, exit code 2 ------------
        p = subprocess.run([VPY, "-m", "cpgd_core", "sample", "--out", os.path.join(RUN, "no_skimage")], cwd=pack_dir,
                           env=env, capture_output=True, text=True, timeout=300)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and not p.stdout.strip() and len(lines) == 1, (p.returncode, p.stdout, p.stderr)
        assert "scikit-image" in lines[0] and f"{VPY} -m pip install scikit-image" in lines[0], lines[0]
        assert "Traceback" not in p.stderr

        # -- the sample, with the Workflows section's commands (this suite's Python has scikit-image) -------------
        sample = [b for b in _bash_blocks(_section(readme, "Workflows")) if "cpgd_core sample" in b]
        assert len(sample) == 1, "the Workflows section gives the commands that put the sample into input/"
        first, rest = sample[0].split("\n", 1)
        assert first.strip() == '"$PY" -m pip install scikit-image', first
        _sh(rest, comfy_dir, dict(env, PY=sys.executable), timeout=600)
        # the batch command without Ray (an optional extra): one error line with the install command, exit code 2
        p = subprocess.run([VPY, "-m", "cpgd_core", "batch", os.path.join(comfy_dir, "input", "cpgd_sample_blurry.mp4"),
                            "--out", os.path.join(RUN, "no_ray")], cwd=pack_dir, env=env, capture_output=True,
                           text=True, timeout=300)
        errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
        assert p.returncode == 2 and len(errors) == 1 and "Traceback" not in p.stderr, (p.returncode, p.stderr)
        assert f"{VPY} -m pip install ray==2.60.0" in errors[0], errors[0]

        # -- ComfyUI started with its own Python (the README: restart ComfyUI) ------------------------------------
        t0 = time.monotonic()
        server = start_comfy_server(comfy_dir, python=VPY, comfy_dir=comfy_dir)
        timings["server start"] = f"{time.monotonic() - t0:.0f} s"
        log = server.log()
        assert "IMPORT FAILED" not in log, log[-4000:]
        assert re.search(rf"seconds: .*custom_nodes[/\\]{PACK}\s*$", log, re.M), log[-4000:]

        info = server.get_json("/object_info")
        nodes = {k for k in info if k.startswith("CPGD_")}
        expected_nodes = {f[:-3] for f in os.listdir(os.path.join(pack_dir, "web", "docs")) if f.endswith(".md")}
        assert nodes == expected_nodes and len(nodes) == 10, (sorted(nodes), sorted(expected_nodes))
        assert all(info[k]["category"].startswith("CPGD") for k in nodes)
        templates = server.get_json("/workflow_templates").get(PACK, [])
        expected_templates = sorted(f[:-5] for f in os.listdir(os.path.join(pack_dir, "workflows"))
                                    if f.endswith(".json"))
        assert sorted(templates) == expected_templates and len(templates) == 5, templates
        served = json.loads(server.get(f"/api/workflow_templates/{PACK}/cpgd_stage_one_deblur.json"))
        assert served.get("nodes"), "the template file is served"

        # -- the stage-one API workflow over HTTP to a decodable video ------------------------------------------
        with open(os.path.join(pack_dir, "workflows", "api", "cpgd_stage_one_deblur.json")) as f:
            prompt = json.load(f)
        loaders = [n for n in prompt.values() if n["class_type"] == "CPGD_LoadVideoWithPriors"]
        assert len(loaders) == 1 and loaders[0]["inputs"]["video"] == "cpgd_sample_blurry.mp4"
        src = os.path.join(comfy_dir, "input", "cpgd_sample_blurry.mp4")
        with av.open(src) as c:
            src_frames = sum(1 for _ in c.decode(video=0))
            src_fps = c.streams.video[0].average_rate
            src_audio = len(c.streams.audio)
        assert src_frames > 0 and src_audio == 1

        t0 = time.monotonic()
        # the whole 72-frame sample in quality mode (the default stage one): about 10 s per 640x360 frame on a
        # loaded 2-core CPU
        hist = server.run(prompt, timeout=3600)
        timings["workflow"] = f"{time.monotonic() - t0:.0f} s"
        assert hist["status"]["status_str"] == "success", json.dumps(hist["status"])[:3000]
        restore = next(k for k, n in prompt.items() if n["class_type"] == "CPGD_CPFPRestore")
        saves = {}  # SaveVideo node -> the restore output its Create Video encodes (0: restored, 1: before|after)
        for k, n in prompt.items():
            if n["class_type"] == "SaveVideo":
                images = prompt[n["inputs"]["video"][0]]["inputs"]["images"]
                assert images[0] == restore, f"Save Video {k} should encode CPFP Restore's frames"
                saves[k] = images[1]
        assert sorted(saves.values()) == [0, 1], saves
        for node_id, output_index in saves.items():
            files = [item for items in hist["outputs"][node_id].values() if isinstance(items, list)
                     for item in items if isinstance(item, dict) and "filename" in item]
            assert len(files) == 1, hist["outputs"]
            out = os.path.join(RUN, f"saved_{node_id}.mp4")
            with open(out, "wb") as f:
                f.write(server.view(files[0]))  # over HTTP, as the browser gets it
            with av.open(out) as c:
                assert c.streams.video[0].average_rate == src_fps
                assert len(c.streams.audio) == src_audio
                frames = [fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]
            assert len(frames) == src_frames
            width = 640 * (1 + output_index)  # before | after side by side
            assert frames[0].shape[:2] == (360, width) and frames[-1].std() > 10, "real picture content"
        server.stop()  # before the lock is released: the next run replaces the folder this server runs in
    print(f"install test: {timings}, total {time.monotonic() - t_start:.0f} s")
