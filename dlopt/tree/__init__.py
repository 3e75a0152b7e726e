"""optax.tree's pytree utilities, same names and signatures: ``dlopt.tree.norm(grads)``.

Arithmetic and reductions (`arith`), moment updates (`moments`), dtypes and casts
(`casting`, `dlopt.core.tree`), random trees (`keys`) and optimizer-state lookup
(`state`). The same functions with ``tree_`` names are `dlopt.tree_utils`. dlopt's internal
pytree helpers (``find_fields``, ``path_name``, ``map_unzip``...) are `dlopt.core.tree`.
"""

from dlopt.core.tree import cast as cast
from dlopt.core.tree import cast_like as cast_like
from dlopt.core.tree import full_like as full_like
from dlopt.core.tree import zeros_like as zeros_like
from dlopt.tree.arith import add as add
from dlopt.tree.arith import add_scale as add_scale
from dlopt.tree.arith import allclose as allclose
from dlopt.tree.arith import batch_shape as batch_shape
from dlopt.tree.arith import clip as clip
from dlopt.tree.arith import conj as conj
from dlopt.tree.arith import div as div
from dlopt.tree.arith import max as max  # noqa: A004
from dlopt.tree.arith import min as min  # noqa: A004
from dlopt.tree.arith import mul as mul
from dlopt.tree.arith import norm as norm
from dlopt.tree.arith import ones_like as ones_like
from dlopt.tree.arith import real as real
from dlopt.tree.arith import scale as scale
from dlopt.tree.arith import size as size
from dlopt.tree.arith import sub as sub
from dlopt.tree.arith import sum as sum  # noqa: A004
from dlopt.tree.arith import vdot as vdot
from dlopt.tree.arith import where as where
from dlopt.tree.casting import dtype as dtype
from dlopt.tree.keys import random_like as random_like
from dlopt.tree.keys import split_key_like as split_key_like
from dlopt.tree.keys import unwrap_random_key_data as unwrap_random_key_data
from dlopt.tree.moments import bias_correction as bias_correction
from dlopt.tree.moments import update_infinity_moment as update_infinity_moment
from dlopt.tree.moments import update_moment as update_moment
from dlopt.tree.moments import update_moment_per_elem_norm as update_moment_per_elem_norm
from dlopt.tree.state import get as get
from dlopt.tree.state import get_all_with_path as get_all_with_path
from dlopt.tree.state import map_params as map_params
from dlopt.tree.state import set as set  # noqa: A004
