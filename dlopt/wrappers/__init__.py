"""Transforms that wrap another transform: the non-finite guard (finite), gradient accumulation,
injected hyperparameters, lookahead, SAM, cautious updates, quantized (8-bit) state, the fused
flat-buffer pass and dynamic loss scaling."""
