"""Training with Flax: train state, jit/pmap/sharded steps, the fit loop and callbacks.

Importing this package imports flax; ``import dlopt`` alone does not.
"""

from dlopt.training.callbacks import Callback as Callback
from dlopt.training.loop import History as History
