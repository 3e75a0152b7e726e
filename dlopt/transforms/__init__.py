"""Building-block transforms that slot into a chain: clipping, constraints, normalization,
regularizers, scaling by a step size, the parameter EMA, conditions, monitoring; and every
name of ``optax.transforms`` at its path ``dlopt.transforms.X``."""

from dlopt.core.combine import MaskedNode as MaskedNode
from dlopt.core.combine import MaskedState as MaskedState
from dlopt.core.combine import PartitionState as PartitionState
from dlopt.core.combine import chain as chain
from dlopt.core.combine import masked as masked
from dlopt.core.combine import named_chain as named_chain
from dlopt.core.combine import partition as partition
from dlopt.optimizers.noisy_sgd import AddNoiseState as AddNoiseState
from dlopt.optimizers.noisy_sgd import add_noise as add_noise
from dlopt.optimizers.sgd import TraceState as TraceState
from dlopt.optimizers.sgd import trace as trace
from dlopt.transforms.clipping import adaptive_grad_clip as adaptive_grad_clip
from dlopt.transforms.clipping import clip as clip
from dlopt.transforms.clipping import clip_by_block_rms as clip_by_block_rms
from dlopt.transforms.clipping import clip_by_global_norm as clip_by_global_norm
from dlopt.transforms.clipping import unitwise_clip as unitwise_clip
from dlopt.transforms.clipping import unitwise_norm as unitwise_norm
from dlopt.transforms.conditionality import ConditionallyMaskState as ConditionallyMaskState
from dlopt.transforms.conditionality import (
    ConditionallyTransformState as ConditionallyTransformState,
)
from dlopt.transforms.conditionality import ConditionFn as ConditionFn
from dlopt.transforms.conditionality import conditionally_mask as conditionally_mask
from dlopt.transforms.conditionality import conditionally_transform as conditionally_transform
from dlopt.transforms.constraints import NonNegativeParamsState as NonNegativeParamsState
from dlopt.transforms.constraints import ZeroNansState as ZeroNansState
from dlopt.transforms.constraints import freeze as freeze
from dlopt.transforms.constraints import keep_params_nonnegative as keep_params_nonnegative
from dlopt.transforms.constraints import selective_transform as selective_transform
from dlopt.transforms.constraints import zero_nans as zero_nans
from dlopt.transforms.ema import EmaState as EmaState
from dlopt.transforms.ema import ema as ema
from dlopt.transforms.layouts import flatten as flatten
from dlopt.transforms.monitoring import MonitorState as MonitorState
from dlopt.transforms.monitoring import SnapshotState as SnapshotState
from dlopt.transforms.monitoring import measure_with_ema as measure_with_ema
from dlopt.transforms.monitoring import monitor as monitor
from dlopt.transforms.monitoring import snapshot as snapshot
from dlopt.transforms.privacy import per_example_global_norm_clip as per_example_global_norm_clip
from dlopt.transforms.privacy import per_example_layer_norm_clip as per_example_layer_norm_clip
from dlopt.transforms.regularizers import add_decayed_weights as add_decayed_weights
from dlopt.wrappers.accumulation import MultiStepsState as MultiStepsState
from dlopt.wrappers.finite import ApplyIfFiniteState as ApplyIfFiniteState
from dlopt.wrappers.finite import apply_if_finite as apply_if_finite
from dlopt.wrappers.multi_steps import MultiSteps as MultiSteps
from dlopt.wrappers.multi_steps import ShouldSkipUpdateFunction as ShouldSkipUpdateFunction
from dlopt.wrappers.multi_steps import skip_large_updates as skip_large_updates
from dlopt.wrappers.multi_steps import skip_not_finite as skip_not_finite
