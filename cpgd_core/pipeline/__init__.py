"""Inference drivers. Stage one: ``pipeline.restore`` (chunked/tiled CPFP), ``pipeline.cli`` (``deblur``),
``pipeline.batch`` (``batch``: many videos on Ray) with ``pipeline.segments`` (split a long video, join it)."""
