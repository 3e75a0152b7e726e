# ruff: noqa: I001  (grouped by origin, not alphabetically)
"""optax.contrib's names at optax's path: ``optax.contrib.muon`` -> ``dlopt.contrib.muon``.

The contributed optimizers and their states, written in dlopt (each in its family file
under `dlopt.optimizers`, `dlopt.wrappers`, `dlopt.schedules`, `dlopt.transforms`) and also
exported at dlopt's top level. Signatures, defaults, state classes and field names are
optax 0.2.8's.
"""

# --- optimizers dlopt already had (re-exported at optax.contrib's path)
from dlopt.linalg.muon_dims import MuonDimensionNumbers as MuonDimensionNumbers
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
from dlopt.optimizers.dadapt import DAdaptAdamWState as DAdaptAdamWState
from dlopt.optimizers.dadapt import ProdigyState as ProdigyState
from dlopt.optimizers.dadapt import dadapt_adamw as dadapt_adamw
from dlopt.optimizers.dadapt import prodigy as prodigy
from dlopt.optimizers.muon import MuonState as MuonState
from dlopt.optimizers.muon import muon as muon
from dlopt.optimizers.muon import scale_by_muon as scale_by_muon
from dlopt.optimizers.schedule_free import ScheduleFreeState as ScheduleFreeState
from dlopt.optimizers.schedule_free import schedule_free as schedule_free
from dlopt.optimizers.schedule_free import schedule_free_adamw as schedule_free_adamw
from dlopt.optimizers.schedule_free import schedule_free_eval_params as schedule_free_eval_params
from dlopt.optimizers.schedule_free import schedule_free_sgd as schedule_free_sgd
from dlopt.schedules.plateau import ReduceLROnPlateauState as ReduceLROnPlateauState
from dlopt.schedules.plateau import reduce_on_plateau as reduce_on_plateau
from dlopt.transforms.normalization import NormalizeState as NormalizeState
from dlopt.transforms.normalization import normalize as normalize
from dlopt.wrappers.sam import SAMState as SAMState
from dlopt.wrappers.sam import sam as sam

# --- contrib optimizers added for optax.contrib (acprop ... momo_adam)
from dlopt.optimizers.acprop import acprop as acprop
from dlopt.optimizers.acprop import scale_by_acprop as scale_by_acprop
from dlopt.optimizers.cocob import COCOBState as COCOBState
from dlopt.optimizers.cocob import cocob as cocob
from dlopt.optimizers.cocob import scale_by_cocob as scale_by_cocob
from dlopt.optimizers.dog import DoGState as DoGState
from dlopt.optimizers.dog import DoWGState as DoWGState
from dlopt.optimizers.dog import dog as dog
from dlopt.optimizers.dog import dowg as dowg
from dlopt.optimizers.madgrad import MadgradState as MadgradState
from dlopt.optimizers.madgrad import madgrad as madgrad
from dlopt.optimizers.madgrad import scale_by_madgrad as scale_by_madgrad
from dlopt.optimizers.mechanic import MechanicState as MechanicState
from dlopt.optimizers.mechanic import mechanize as mechanize
from dlopt.optimizers.momo import MomoAdamState as MomoAdamState
from dlopt.optimizers.momo import MomoState as MomoState
from dlopt.optimizers.momo import momo as momo
from dlopt.optimizers.momo import momo_adam as momo_adam

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
