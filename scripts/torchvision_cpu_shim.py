"""Environment workaround (installed into the venv's site-packages by scripts/setup_env.sh).

The only torchvision wheel on the package index that matches torch 2.13.0 is a CUDA build: its
compiled ops library (_C.so) needs libtorch_cuda.so, which the CPU torch lacks. torchvision then
registers fake kernels for ``torchvision::nms``/``qnms`` without checking that the ops exist, so
``import torchvision`` dies, and ComfyUI imports torchvision unconditionally (comfy/sd.py ->
comfy/ldm/cascade/stage_c_coder.py). Just before the first ``import torchvision`` this hook
declares the two op *schemas* (no kernels) when _C.so cannot load. Pure-Python torchvision works
afterwards; compiled ops still raise torchvision's usual error. Nothing in torch, torchvision or
ComfyUI is edited, and this pack's code never relies on it (it has its own deformable conv).
Set TORCHVISION_CPU_SHIM=0 to disable.
"""
import importlib.abc
import importlib.util
import os
import sys

_KEEP = []  # the torch.library.Library must stay alive


def _declare_missing_ops() -> None:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    lib_path = os.path.join(list(spec.submodule_search_locations)[0], "_C.so")
    try:
        torch.ops.load_library(lib_path)
        return  # a matching build: the real ops exist
    except (OSError, ImportError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(lib)


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    armed = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision" or not _BeforeTorchvision.armed:
            return None
        _BeforeTorchvision.armed = False
        try:
            _declare_missing_ops()
        except Exception as exc:  # never break interpreter start-up
            print(f"[torchvision-cpu-shim] {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


if os.environ.get("TORCHVISION_CPU_SHIM", "1") != "0":
    sys.meta_path.insert(0, _BeforeTorchvision())
