"""dlopt: the deep-learning training toolbox as pure JAX functions.

Every public name is written once here; its home module is the docs section.
"""

# --- the contract
from dlopt.base import EmptyState as EmptyState
from dlopt.base import GradientTransformation as GradientTransformation
from dlopt.base import GradientTransformationExtraArgs as GradientTransformationExtraArgs
from dlopt.base import Schedule as Schedule
from dlopt.base import apply_updates as apply_updates
from dlopt.base import identity as identity
from dlopt.base import stateless as stateless
from dlopt.base import with_extra_args_support as with_extra_args_support
from dlopt.combine import MaskedNode as MaskedNode
from dlopt.combine import chain as chain
from dlopt.combine import masked as masked
from dlopt.combine import named_chain as named_chain
from dlopt.combine import partition as partition

# --- optimizers
from dlopt.optimizers.scaling import scale as scale
from dlopt.optimizers.scaling import scale_by_learning_rate as scale_by_learning_rate
from dlopt.optimizers.scaling import scale_by_schedule as scale_by_schedule
from dlopt.optimizers.sgd import sgd as sgd
from dlopt.optimizers.sgd import trace as trace

# --- regularizers
from dlopt.regularizers import add_decayed_weights as add_decayed_weights

# --- schedules

# --- plateau

# --- clipping

# --- initializers (a namespace: dlopt.initializers.glorot_uniform, ...)

# --- wrappers

# --- submodules
from dlopt import tree as tree

__version__ = "0.1.0"
