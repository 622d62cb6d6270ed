"""CPGD core library: codec priors, CPFP/CPControlNet models, kernels, weights and training.

Runs without ComfyUI. See docs/ARCHITECTURE.md for the layout and conventions.
"""
__version__ = "0.1.0"
