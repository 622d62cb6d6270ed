"""ComfyUI glue. Each module exports NODES, a list of io.ComfyNode classes."""
from comfy_api.latest import ComfyExtension, io

from . import video_nodes, cpfp_nodes, cpc_nodes


class CPGDExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*video_nodes.NODES, *cpfp_nodes.NODES, *cpc_nodes.NODES]
