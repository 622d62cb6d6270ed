"""The explicit blur model of the non-blind stage one.

Measure each pixel's blur (``field``: the trajectory it sweeps during the exposure, from the codec's vectors
refined, with the exposure estimated), then invert it (``operator``: the per-pixel trajectory blur and its exact
adjoint; ``solver``: half-quadratic splitting with a learned prior).
"""
