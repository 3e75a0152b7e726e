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
from dlopt.linalg.muon_dims import MuonDimensionNumbers as MuonDimensionNumbers
from dlopt.linalg.muon_dims import (
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

# --- contrib optimizers (optax.contrib): also at dlopt.contrib.X
from dlopt.optimizers.acprop import acprop as acprop
from dlopt.optimizers.acprop import scale_by_acprop as scale_by_acprop
from dlopt.optimizers.cocob import COCOBState as COCOBState
from dlopt.optimizers.cocob import cocob as cocob
from dlopt.optimizers.cocob import scale_by_cocob as scale_by_cocob
from dlopt.optimizers.dog import DoGState as DoGState
from dlopt.optimizers.dog import DoWGState as DoWGState
from dlopt.optimizers.dog import dog as dog
from dlopt.optimizers.dog import dowg as dowg
from dlopt.optimizers.dog import scale_by_dog as scale_by_dog
from dlopt.optimizers.dog import scale_by_dowg as scale_by_dowg
from dlopt.optimizers.madgrad import MadgradState as MadgradState
from dlopt.optimizers.madgrad import madgrad as madgrad
from dlopt.optimizers.madgrad import scale_by_madgrad as scale_by_madgrad
from dlopt.optimizers.mechanic import MechanicState as MechanicState
from dlopt.optimizers.mechanic import mechanize as mechanize
from dlopt.optimizers.momo import MomoAdamState as MomoAdamState
from dlopt.optimizers.momo import MomoState as MomoState
from dlopt.optimizers.momo import momo as momo
from dlopt.optimizers.momo import momo_adam as momo_adam
from dlopt.transforms.normalization import NormalizeState as NormalizeState

# --- losses (optax's top-level loss names; all of them live in dlopt.losses)
from dlopt import losses as losses
from dlopt.losses.divergence import convex_kl_divergence as convex_kl_divergence
from dlopt.losses.regression import cosine_distance as cosine_distance
from dlopt.losses.regression import cosine_similarity as cosine_similarity
from dlopt.losses.ctc import ctc_loss as ctc_loss
from dlopt.losses.ctc import ctc_loss_with_forward_probs as ctc_loss_with_forward_probs
from dlopt.losses.divergence import generalized_kl_divergence as generalized_kl_divergence
from dlopt.losses.margin import hinge_loss as hinge_loss
from dlopt.losses.regression import huber_loss as huber_loss
from dlopt.losses.divergence import kl_divergence as kl_divergence
from dlopt.losses.regression import l2_loss as l2_loss
from dlopt.losses.regression import log_cosh as log_cosh
from dlopt.losses.self_supervised import ntxent as ntxent
from dlopt.losses.classification import safe_softmax_cross_entropy as safe_softmax_cross_entropy
from dlopt.losses.sigmoid import sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy
from dlopt.losses.sigmoid import sigmoid_focal_loss as sigmoid_focal_loss
from dlopt.losses.smoothing import smooth_labels as smooth_labels
from dlopt.losses.classification import softmax_cross_entropy as softmax_cross_entropy
from dlopt.losses.classification import (
    softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels,
)
from dlopt.losses.regression import squared_error as squared_error

# --- optax API: wrappers, schedules, aliases
from dlopt.core.base import OptState as OptState
from dlopt.core.base import Params as Params
from dlopt.core.base import ScalarOrSchedule as ScalarOrSchedule
from dlopt.core.base import TransformInitFn as TransformInitFn
from dlopt.core.base import TransformUpdateExtraArgsFn as TransformUpdateExtraArgsFn
from dlopt.core.base import TransformUpdateFn as TransformUpdateFn
from dlopt.core.base import Updates as Updates
from dlopt.core.base import init_empty_state as init_empty_state
from dlopt.core.base import stateless_with_tree_map as stateless_with_tree_map
from dlopt.core.combine import MaskedState as MaskedState
from dlopt.core.combine import MaskOrFn as MaskOrFn
from dlopt.core.combine import MultiTransformState as MultiTransformState
from dlopt.core.combine import PartitionState as PartitionState
from dlopt.core.combine import multi_transform as multi_transform
from dlopt.core.param_updates import incremental_update as incremental_update
from dlopt.core.param_updates import periodic_update as periodic_update
from dlopt.core.param_updates import scale_gradient as scale_gradient
from dlopt.optimizers.optimistic import optimistic_adam as optimistic_adam
from dlopt.optimizers.trust_ratio import ScaleByTrustRatioState as ScaleByTrustRatioState
from dlopt.schedules.cycles import linear_onecycle_schedule as linear_onecycle_schedule
from dlopt.schedules.cycles import piecewise_interpolate_schedule as piecewise_interpolate_schedule
from dlopt.schedules.cycles import sgdr_schedule as sgdr_schedule
from dlopt.schedules.cycles import warmup_constant_schedule as warmup_constant_schedule
from dlopt.transforms.clipping import AdaptiveGradClipState as AdaptiveGradClipState
from dlopt.transforms.clipping import ClipByGlobalNormState as ClipByGlobalNormState
from dlopt.transforms.clipping import ClipState as ClipState
from dlopt.transforms.conditionality import ConditionFn as ConditionFn
from dlopt.transforms.conditionality import ConditionallyMaskState as ConditionallyMaskState
from dlopt.transforms.conditionality import (
    ConditionallyTransformState as ConditionallyTransformState,
)
from dlopt.transforms.conditionality import conditionally_mask as conditionally_mask
from dlopt.transforms.conditionality import conditionally_transform as conditionally_transform
from dlopt.transforms.constraints import selective_transform as selective_transform
from dlopt.transforms.layouts import flatten as flatten
from dlopt.transforms.monitoring import MonitorState as MonitorState
from dlopt.transforms.monitoring import SnapshotState as SnapshotState
from dlopt.transforms.monitoring import measure_with_ema as measure_with_ema
from dlopt.transforms.monitoring import monitor as monitor
from dlopt.transforms.monitoring import snapshot as snapshot
from dlopt.transforms.param_scale import (
    scale_by_distance_over_gradients as scale_by_distance_over_gradients,
)
from dlopt.transforms.param_scale import scale_by_param_block_norm as scale_by_param_block_norm
from dlopt.transforms.regularizers import AddDecayedWeightsState as AddDecayedWeightsState
from dlopt.transforms.scaling import ScaleByScheduleState as ScaleByScheduleState
from dlopt.transforms.scaling import ScaleState as ScaleState
from dlopt.wrappers.accumulation import ApplyEvery as ApplyEvery
from dlopt.wrappers.accumulation import apply_every as apply_every
from dlopt.wrappers.inject import InjectStatefulHyperparamsState as InjectStatefulHyperparamsState
from dlopt.wrappers.inject import WrappedSchedule as WrappedSchedule
from dlopt.wrappers.multi_steps import MultiSteps as MultiSteps
from dlopt.wrappers.multi_steps import ShouldSkipUpdateFunction as ShouldSkipUpdateFunction
from dlopt.wrappers.multi_steps import skip_large_updates as skip_large_updates
from dlopt.wrappers.multi_steps import skip_not_finite as skip_not_finite

# --- contrib: galore, sophia, privacy, complex
from dlopt.optimizers.galore import GaLoreDimensionNumbers as GaLoreDimensionNumbers
from dlopt.optimizers.galore import GaLoreState as GaLoreState
from dlopt.optimizers.galore import galore as galore
from dlopt.optimizers.galore import scale_by_galore as scale_by_galore
from dlopt.optimizers.sophia import HutchinsonState as HutchinsonState
from dlopt.optimizers.sophia import SophiaState as SophiaState
from dlopt.optimizers.sophia import (
    hutchinson_estimator_diag_hessian as hutchinson_estimator_diag_hessian,
)
from dlopt.optimizers.sophia import scale_by_sophia as scale_by_sophia
from dlopt.optimizers.sophia import sophia as sophia
from dlopt.transforms.complex_valued import SplitRealAndImaginaryState as SplitRealAndImaginaryState
from dlopt.transforms.complex_valued import split_real_and_imaginary as split_real_and_imaginary
from dlopt.transforms.privacy import (
    DifferentiallyPrivateAggregateState as DifferentiallyPrivateAggregateState,
)
from dlopt.transforms.privacy import (
    differentially_private_aggregate as differentially_private_aggregate,
)
from dlopt.transforms.privacy import dpsgd as dpsgd
from dlopt.transforms.privacy import per_example_global_norm_clip as per_example_global_norm_clip
from dlopt.transforms.privacy import per_example_layer_norm_clip as per_example_layer_norm_clip

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

# --- spikes: skipping and clipping bad steps (issue 22)
from dlopt.transforms.update_clipping import ClipByNormHistoryState as ClipByNormHistoryState
from dlopt.transforms.update_clipping import clip_by_norm_history as clip_by_norm_history
from dlopt.transforms.update_clipping import clip_by_update_rms as clip_by_update_rms
from dlopt.wrappers.spikes import SkipStepOnSpikesState as SkipStepOnSpikesState
from dlopt.wrappers.spikes import skip_step_on_spikes as skip_step_on_spikes

# --- muon: Polar Express, NorMuon, expert weights, stacked compiles (issue 22)
from dlopt.optimizers.normuon import normuon as normuon

# --- optimizers: PSGD Kron (issue 22)
from dlopt.optimizers.kron import ScaleByKronState as ScaleByKronState
from dlopt.optimizers.kron import kron as kron
from dlopt.optimizers.kron_step import (
    precond_update_prob_schedule as precond_update_prob_schedule,
)
from dlopt.optimizers.kron import scale_by_kron as scale_by_kron

# --- shampoo (issue 22)
from dlopt.optimizers.shampoo import GraftingType as GraftingType
from dlopt.optimizers.shampoo import PreconditionerType as PreconditionerType
from dlopt.optimizers.shampoo import ShampooState as ShampooState
from dlopt.optimizers.shampoo import distributed_shampoo as distributed_shampoo

# --- submodules
from dlopt import assignment as assignment
from dlopt import contrib as contrib
from dlopt import metrics as metrics
from dlopt import microbatching as microbatching
from dlopt.core import numerics as numerics
from dlopt import perturbations as perturbations
from dlopt import projections as projections
from dlopt import schedules as schedules
from dlopt import second_order as second_order
from dlopt import testing as testing
from dlopt import transforms as transforms
from dlopt import tree as tree
from dlopt import tree_utils as tree_utils

__version__ = "0.1.0"
