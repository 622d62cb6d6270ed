"""Modulated deformable convolution: PyTorch path (any device) and Triton kernels (CUDA)."""
from .deform_conv import DCNGeometry, deform_conv2d, triton_available

__all__ = ["deform_conv2d", "triton_available", "DCNGeometry"]
