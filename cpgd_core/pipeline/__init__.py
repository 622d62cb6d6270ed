"""Inference drivers. Stage one: ``pipeline.restore`` (chunked/tiled CPFP) and ``pipeline.cli`` (``deblur``)."""
