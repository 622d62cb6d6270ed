"""The pack loads into a real ComfyUI through its V3 entry point."""


def test_pack_registers_through_comfy_entrypoint(comfy):
    mod = comfy.pack_module
    assert not hasattr(mod, "NODE_CLASS_MAPPINGS"), "V1 mappings would make ComfyUI ignore comfy_entrypoint"
    assert hasattr(mod, "comfy_entrypoint") and mod.WEB_DIRECTORY == "./web"


def test_core_graph_runs(comfy):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 2, "color": 0xFF0000}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    res = comfy.run(prompt)
    img = res.output("2")
    assert tuple(img.shape) == (2, 16, 32, 3)
    assert float(img[..., 0].max()) == 0.0 and float(img[..., 1].min()) == 1.0
