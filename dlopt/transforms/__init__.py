"""Building-block transforms that slot into a chain: clipping, constraints, normalization,
regularizers, scaling by a step size, and the parameter EMA."""
