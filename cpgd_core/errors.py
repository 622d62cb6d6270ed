class CPGDInputError(ValueError):
    """Bad user input (file, frame range, weights, sizes). The message names the problem for the user."""
