"""dlopt: the deep-learning training toolbox as pure JAX functions.

Every public name is written once here; its home module is the docs section.
"""

# --- the contract
from dlopt.core.base import EmptyState as EmptyState
from dlopt.core.base import GradientTransformation as GradientTransformation
from dlopt.core.base import GradientTransformationExtraArgs as GradientTransformationExtraArgs
from dlopt.core.base import Schedule as Schedule
from dlopt.core.base import StatefulSchedule as StatefulSchedule
from dlopt.core.base import apply_updates as apply_updates
from dlopt.core.base import identity as identity
from dlopt.core.base import set_to_zero as set_to_zero
from dlopt.core.base import stateless as stateless
from dlopt.core.base import with_extra_args_support as with_extra_args_support
from dlopt.core.combine import MaskedNode as MaskedNode
from dlopt.core.combine import chain as chain
from dlopt.core.combine import masked as masked
from dlopt.core.combine import named_chain as named_chain
from dlopt.core.combine import partition as partition
from dlopt.core.combine import path_labels as path_labels
from dlopt.core.per_leaf import per_leaf as per_leaf

# --- optimizers
from dlopt.optimizers.adadelta import ScaleByAdaDeltaState as ScaleByAdaDeltaState
from dlopt.optimizers.adadelta import adadelta as adadelta
from dlopt.optimizers.adadelta import scale_by_adadelta as scale_by_adadelta
from dlopt.optimizers.adagrad import ScaleByRssState as ScaleByRssState
from dlopt.optimizers.adagrad import adagrad as adagrad
from dlopt.optimizers.adagrad import scale_by_rss as scale_by_rss
from dlopt.optimizers.adam import ScaleByAdamState as ScaleByAdamState
from dlopt.optimizers.adam import adam as adam
from dlopt.optimizers.adam import adamw as adamw
from dlopt.optimizers.adam import nadam as nadam
from dlopt.optimizers.adam import nadamw as nadamw
from dlopt.optimizers.adam import scale_by_adam as scale_by_adam
from dlopt.optimizers.adamax import ScaleByAdamaxState as ScaleByAdamaxState
from dlopt.optimizers.adamax import adamax as adamax
from dlopt.optimizers.adamax import scale_by_adamax as scale_by_adamax
from dlopt.optimizers.lion import ScaleByLionState as ScaleByLionState
from dlopt.optimizers.lion import lion as lion
from dlopt.optimizers.lion import scale_by_lion as scale_by_lion
from dlopt.optimizers.rmsprop import ScaleByRmsState as ScaleByRmsState
from dlopt.optimizers.rmsprop import ScaleByRStdDevState as ScaleByRStdDevState
from dlopt.optimizers.rmsprop import rmsprop as rmsprop
from dlopt.optimizers.rmsprop import scale_by_rms as scale_by_rms
from dlopt.optimizers.rmsprop import scale_by_stddev as scale_by_stddev
from dlopt.optimizers.sgd import TraceState as TraceState
from dlopt.transforms.scaling import scale as scale
from dlopt.transforms.scaling import scale_by_learning_rate as scale_by_learning_rate
from dlopt.transforms.scaling import scale_by_schedule as scale_by_schedule
from dlopt.optimizers.sgd import sgd as sgd
from dlopt.optimizers.sgd import trace as trace

# --- optimizers: Adam relatives, torch's and Keras's (radam ... novograd, rprop, asgd, ftrl)
from dlopt.optimizers.adabelief import ScaleByBeliefState as ScaleByBeliefState
from dlopt.optimizers.adabelief import adabelief as adabelief
from dlopt.optimizers.adabelief import scale_by_belief as scale_by_belief
from dlopt.optimizers.adamax import adamaxw as adamaxw
from dlopt.optimizers.adan import ScaleByAdanState as ScaleByAdanState
from dlopt.optimizers.adan import adan as adan
from dlopt.optimizers.adan import scale_by_adan as scale_by_adan
from dlopt.optimizers.amsgrad import ScaleByAmsgradState as ScaleByAmsgradState
from dlopt.optimizers.amsgrad import amsgrad as amsgrad
from dlopt.optimizers.amsgrad import scale_by_amsgrad as scale_by_amsgrad
from dlopt.optimizers.asgd import AsgdState as AsgdState
from dlopt.optimizers.asgd import asgd as asgd
from dlopt.optimizers.asgd import asgd_averaged_params as asgd_averaged_params
from dlopt.optimizers.ftrl import FtrlState as FtrlState
from dlopt.optimizers.ftrl import ftrl as ftrl
from dlopt.optimizers.novograd import ScaleByNovogradState as ScaleByNovogradState
from dlopt.optimizers.novograd import novograd as novograd
from dlopt.optimizers.novograd import scale_by_novograd as scale_by_novograd
from dlopt.optimizers.radam import radam as radam
from dlopt.optimizers.radam import scale_by_radam as scale_by_radam
from dlopt.optimizers.rprop import ScaleByRpropState as ScaleByRpropState
from dlopt.optimizers.rprop import rprop as rprop
from dlopt.optimizers.rprop import scale_by_rprop as scale_by_rprop
from dlopt.optimizers.yogi import scale_by_yogi as scale_by_yogi
from dlopt.optimizers.yogi import yogi as yogi

# --- optimizers: memory-lean, large-batch, sign and game (adafactor ... polyak_sgd)
from dlopt.optimizers.adafactor import FactoredState as FactoredState
from dlopt.optimizers.adafactor import adafactor as adafactor
from dlopt.optimizers.adafactor import scale_by_factored_rms as scale_by_factored_rms
from dlopt.optimizers.adafactor import scale_by_param_block_rms as scale_by_param_block_rms
from dlopt.optimizers.noisy_sgd import AddNoiseState as AddNoiseState
from dlopt.optimizers.noisy_sgd import add_noise as add_noise
from dlopt.optimizers.noisy_sgd import noisy_sgd as noisy_sgd
from dlopt.optimizers.optimistic import (
    ScaleByOptimisticGradientState as ScaleByOptimisticGradientState,
)
from dlopt.optimizers.optimistic import optimistic_adam_v2 as optimistic_adam_v2
from dlopt.optimizers.optimistic import optimistic_gradient_descent as optimistic_gradient_descent
from dlopt.optimizers.optimistic import scale_by_optimistic_gradient as scale_by_optimistic_gradient
from dlopt.optimizers.polyak import polyak_sgd as polyak_sgd
from dlopt.optimizers.polyak import scale_by_polyak as scale_by_polyak
from dlopt.optimizers.sign import scale_by_sign as scale_by_sign
from dlopt.optimizers.sign import sign_sgd as sign_sgd
from dlopt.optimizers.sign import signum as signum
from dlopt.optimizers.sm3 import ScaleBySM3State as ScaleBySM3State
from dlopt.optimizers.sm3 import scale_by_sm3 as scale_by_sm3
from dlopt.optimizers.sm3 import sm3 as sm3
from dlopt.optimizers.trust_ratio import fromage as fromage
from dlopt.optimizers.trust_ratio import lamb as lamb
from dlopt.optimizers.trust_ratio import lars as lars
from dlopt.optimizers.trust_ratio import scale_by_trust_ratio as scale_by_trust_ratio

# --- optimizers: second order (lbfgs and the line searches)
from dlopt.optimizers.lbfgs import ScaleByLBFGSState as ScaleByLBFGSState
from dlopt.optimizers.lbfgs import lbfgs as lbfgs
from dlopt.optimizers.lbfgs import scale_by_lbfgs as scale_by_lbfgs
from dlopt.linesearch.backtracking import BacktrackingLinesearchInfo as BacktrackingLinesearchInfo
from dlopt.linesearch.backtracking import (
    ScaleByBacktrackingLinesearchState as ScaleByBacktrackingLinesearchState,
)
from dlopt.linesearch.backtracking import (
    scale_by_backtracking_linesearch as scale_by_backtracking_linesearch,
)
from dlopt.linesearch.backtracking import value_and_grad_from_state as value_and_grad_from_state
from dlopt.linesearch.zoom import (
    ScaleByZoomLinesearchState as ScaleByZoomLinesearchState,
)
from dlopt.linesearch.zoom import ZoomLinesearchInfo as ZoomLinesearchInfo
from dlopt.linesearch.zoom import scale_by_zoom_linesearch as scale_by_zoom_linesearch

# --- optimizers: modern (muon, soap, adopt, ademamix)
from dlopt.optimizers.ademamix import ScaleByAdemamixState as ScaleByAdemamixState
from dlopt.optimizers.ademamix import (
    ScaleBySimplifiedAdEMAMixState as ScaleBySimplifiedAdEMAMixState,
)
from dlopt.optimizers.ademamix import ademamix as ademamix
from dlopt.optimizers.ademamix import scale_by_ademamix as scale_by_ademamix
from dlopt.optimizers.ademamix import scale_by_simplified_ademamix as scale_by_simplified_ademamix
from dlopt.optimizers.ademamix import simplified_ademamix as simplified_ademamix
from dlopt.optimizers.adopt import adopt as adopt
from dlopt.optimizers.adopt import scale_by_adopt as scale_by_adopt
from dlopt.optimizers.muon import MuonState as MuonState
from dlopt.optimizers.muon import muon as muon
from dlopt.optimizers.muon import scale_by_muon as scale_by_muon
from dlopt.linalg.newton_schulz import MuonDimensionNumbers as MuonDimensionNumbers
from dlopt.linalg.newton_schulz import (
    infer_muon_dimension_numbers as infer_muon_dimension_numbers,
)
from dlopt.linalg.newton_schulz import (
    orthogonalize_via_newton_schulz as orthogonalize_via_newton_schulz,
)
from dlopt.optimizers.soap import ScaleBySoapState as ScaleBySoapState
from dlopt.optimizers.soap import scale_by_soap as scale_by_soap
from dlopt.optimizers.soap import soap as soap

# --- optimizers: schedule-free and parameter-free (schedule_free_*, prodigy, dadapt_adamw)
from dlopt.optimizers.dadapt import DAdaptAdamWState as DAdaptAdamWState
from dlopt.optimizers.dadapt import ProdigyState as ProdigyState
from dlopt.optimizers.dadapt import dadapt_adamw as dadapt_adamw
from dlopt.optimizers.dadapt import prodigy as prodigy
from dlopt.optimizers.schedule_free import ScheduleFreeState as ScheduleFreeState
from dlopt.optimizers.schedule_free import schedule_free as schedule_free
from dlopt.optimizers.schedule_free import schedule_free_adamw as schedule_free_adamw
from dlopt.optimizers.schedule_free import schedule_free_eval_params as schedule_free_eval_params
from dlopt.optimizers.schedule_free import schedule_free_sgd as schedule_free_sgd

# --- regularizers
from dlopt.transforms.regularizers import add_decayed_weights as add_decayed_weights
from dlopt.transforms.regularizers import add_l1_subgradient as add_l1_subgradient
from dlopt.transforms.regularizers import elastic_net_penalty as elastic_net_penalty
from dlopt.transforms.regularizers import l1_penalty as l1_penalty
from dlopt.transforms.regularizers import l2_penalty as l2_penalty
from dlopt.transforms.regularizers import weights_only as weights_only

# --- schedules
from dlopt.schedules.decay import constant_schedule as constant_schedule
from dlopt.schedules.decay import cosine_decay_schedule as cosine_decay_schedule
from dlopt.schedules.decay import cosine_onecycle_schedule as cosine_onecycle_schedule
from dlopt.schedules.decay import exponential_decay as exponential_decay
from dlopt.schedules.decay import join_schedules as join_schedules
from dlopt.schedules.decay import linear_schedule as linear_schedule
from dlopt.schedules.decay import piecewise_constant_schedule as piecewise_constant_schedule
from dlopt.schedules.decay import polynomial_schedule as polynomial_schedule
from dlopt.schedules.decay import step_decay_schedule as step_decay_schedule
from dlopt.schedules.decay import warmup_cosine_decay_schedule as warmup_cosine_decay_schedule
from dlopt.schedules.decay import (
    warmup_exponential_decay_schedule as warmup_exponential_decay_schedule,
)

# --- plateau
from dlopt.schedules.plateau import PlateauConfig as PlateauConfig
from dlopt.schedules.plateau import PlateauState as PlateauState
from dlopt.schedules.plateau import ReduceLROnPlateauState as ReduceLROnPlateauState
from dlopt.schedules.plateau import plateau_init as plateau_init
from dlopt.schedules.plateau import plateau_step as plateau_step
from dlopt.schedules.plateau import reduce_on_plateau as reduce_on_plateau

# --- clipping
from dlopt.transforms.clipping import adaptive_grad_clip as adaptive_grad_clip
from dlopt.transforms.clipping import clip as clip
from dlopt.transforms.clipping import clip_by_block_rms as clip_by_block_rms
from dlopt.transforms.clipping import clip_by_global_norm as clip_by_global_norm

# --- initializers (a namespace: dlopt.initializers.glorot_uniform, ...)
from dlopt import initializers as initializers

# --- wrappers
from dlopt.wrappers.inject import InjectHyperparamsState as InjectHyperparamsState
from dlopt.wrappers.inject import get_hyperparam as get_hyperparam
from dlopt.wrappers.inject import inject_hyperparams as inject_hyperparams
from dlopt.wrappers.inject import inject_stateful_hyperparams as inject_stateful_hyperparams
from dlopt.wrappers.inject import set_hyperparam as set_hyperparam
from dlopt.wrappers.inject import set_schedule_scale as set_schedule_scale
from dlopt.wrappers.finite import ApplyIfFiniteState as ApplyIfFiniteState
from dlopt.wrappers.finite import apply_if_finite as apply_if_finite
from dlopt.wrappers.accumulation import MultiStepsState as MultiStepsState
from dlopt.wrappers.accumulation import multi_steps as multi_steps
from dlopt.wrappers.fused import fused as fused

# --- mixed precision (a loss-scaling policy for the train steps, not a transform)
from dlopt.wrappers.loss_scale import DynamicLossScale as DynamicLossScale
from dlopt.wrappers.loss_scale import DynamicLossScaleState as DynamicLossScaleState
from dlopt.wrappers.loss_scale import dynamic_loss_scale as dynamic_loss_scale

# --- wrappers and elementwise transforms (cautious, lookahead, ema, sam, freeze, ...)
from dlopt.wrappers.cautious import cautious as cautious
from dlopt.transforms.constraints import NonNegativeParamsState as NonNegativeParamsState
from dlopt.transforms.constraints import ZeroNansState as ZeroNansState
from dlopt.transforms.constraints import freeze as freeze
from dlopt.transforms.constraints import keep_params_nonnegative as keep_params_nonnegative
from dlopt.transforms.constraints import zero_nans as zero_nans
from dlopt.transforms.ema import EmaState as EmaState
from dlopt.transforms.ema import ema as ema
from dlopt.wrappers.lookahead import LookaheadParams as LookaheadParams
from dlopt.wrappers.lookahead import LookaheadState as LookaheadState
from dlopt.wrappers.lookahead import lookahead as lookahead
from dlopt.transforms.normalization import centralize as centralize
from dlopt.transforms.normalization import normalize as normalize
from dlopt.transforms.normalization import normalize_by_update_norm as normalize_by_update_norm
from dlopt.wrappers.sam import SAMState as SAMState
from dlopt.wrappers.sam import sam as sam

# --- memory (quantized optimizer state)
from dlopt.wrappers.quantized import QuantizedArray as QuantizedArray
from dlopt.wrappers.quantized import QuantizedState as QuantizedState
from dlopt.wrappers.quantized import quantized as quantized

# --- tree utilities, numerics, projections, linear algebra, microbatching (optax's top level)
from dlopt.core.numerics import global_norm as global_norm
from dlopt.core.numerics import safe_norm as safe_norm
from dlopt.core.numerics import safe_root_mean_squares as safe_root_mean_squares
from dlopt.core.tree import safe_increment as safe_increment
from dlopt.core.tree import safe_increment as safe_int32_increment
from dlopt.linalg.nnls import nnls as nnls
from dlopt.linalg.power import matrix_inverse_pth_root as matrix_inverse_pth_root
from dlopt.linalg.power import power_iteration as power_iteration
from dlopt.microbatching import microbatch as microbatch
from dlopt.perturbations import multi_normal as multi_normal
from dlopt.tree.moments import bias_correction as bias_correction
from dlopt.tree.moments import update_infinity_moment as update_infinity_moment
from dlopt.tree.moments import update_moment as update_moment
from dlopt.tree.moments import update_moment_per_elem_norm as update_moment_per_elem_norm
from dlopt.tree.state import map_params as tree_map_params

# --- submodules
from dlopt import assignment as assignment
from dlopt import metrics as metrics
from dlopt import microbatching as microbatching
from dlopt.core import numerics as numerics
from dlopt import perturbations as perturbations
from dlopt import projections as projections
from dlopt import second_order as second_order
from dlopt import testing as testing
from dlopt import tree as tree
from dlopt import tree_utils as tree_utils

__version__ = "0.1.0"
