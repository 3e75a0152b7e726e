"""Learning-rate schedules (``step -> value``) and reduce-on-plateau, at optax's path
``optax.schedules``."""

from dlopt.core.base import Schedule as Schedule
from dlopt.core.base import StatefulSchedule as StatefulSchedule
from dlopt.schedules.cycles import linear_onecycle_schedule as linear_onecycle_schedule
from dlopt.schedules.cycles import (
    piecewise_interpolate_schedule as piecewise_interpolate_schedule,
)
from dlopt.schedules.cycles import sgdr_schedule as sgdr_schedule
from dlopt.schedules.cycles import warmup_constant_schedule as warmup_constant_schedule
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
from dlopt.schedules.plateau import PlateauConfig as PlateauConfig
from dlopt.schedules.plateau import PlateauState as PlateauState
from dlopt.schedules.plateau import ReduceLROnPlateauState as ReduceLROnPlateauState
from dlopt.schedules.plateau import plateau_init as plateau_init
from dlopt.schedules.plateau import plateau_step as plateau_step
from dlopt.schedules.plateau import reduce_on_plateau as reduce_on_plateau
from dlopt.wrappers.inject import InjectHyperparamsState as InjectHyperparamsState
from dlopt.wrappers.inject import (
    InjectStatefulHyperparamsState as InjectStatefulHyperparamsState,
)
from dlopt.wrappers.inject import WrappedSchedule as WrappedSchedule
from dlopt.wrappers.inject import inject_hyperparams as inject_hyperparams
from dlopt.wrappers.inject import inject_stateful_hyperparams as inject_stateful_hyperparams
