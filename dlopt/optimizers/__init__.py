"""Optimizer families, one per file: state, ``scale_by_*`` building block, aliases."""
