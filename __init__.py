"""CPGD for ComfyUI: coding-prior guided video deblurring (CPGD-Net, arXiv 2504.12222).

ComfyUI loads this file. It only exposes the V3 entry point and the web folder; the nodes live in
``nodes/`` and the library in ``cpgd_core/``. No NODE_CLASS_MAPPINGS here on purpose: ComfyUI
would then ignore ``comfy_entrypoint``.
"""
WEB_DIRECTORY = "./web"

try:
    from comfy_api.latest import ComfyExtension  # noqa: F401  (ComfyUI >= 0.3.75)
except ImportError as exc:  # imported outside ComfyUI, or a ComfyUI older than 0.3.75
    _IMPORT_ERROR = exc
else:
    _IMPORT_ERROR = None


async def comfy_entrypoint():
    if _IMPORT_ERROR is not None:
        raise RuntimeError(
            "CPGD for ComfyUI needs ComfyUI >= 0.3.75 (comfy_api.latest); "
            f"import failed: {_IMPORT_ERROR}")
    from .nodes import CPGDExtension
    return CPGDExtension()
