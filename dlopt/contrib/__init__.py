"""optax.contrib's names at the same path: ``dlopt.contrib.X`` is ``dlopt.X``."""

# --- contrib_b: galore, sophia, privacy, complex
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
