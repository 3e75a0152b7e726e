"""NorMuon: Muon with neuron-wise second-moment normalization (Li et al., 2025).

Example:
    >>> import dlopt
    >>> dlopt.normuon.func is dlopt.muon, dlopt.normuon.keywords
    (True, {'normalize': 'neuron'})
"""

from __future__ import annotations

from dlopt.optimizers import alias
from dlopt.optimizers.muon import muon

normuon = alias(
    muon,
    "normuon",
    """NorMuon: `muon` with ``normalize="neuron"``; arguments as in `muon` (``beta2``: the
    second moment's decay, 0.95, the reference's default).

    After the orthogonalization :math:`O = \\operatorname{NS}(\\hat m)` of each matrix
    (reduction axes = rows, output axes = columns, one per output neuron):

    .. math::
        v \\leftarrow \\beta_2 v + (1 - \\beta_2)\\, \\operatorname{mean}_{rows}(O \\odot O),
        \\quad \\hat O = \\frac{O}{\\sqrt v + 10^{-10}}, \\quad
        O \\leftarrow \\frac{\\|O\\|_F}{\\|\\hat O\\|_F + 10^{-10}} \\hat O,

    then Muon's shape scaling, weight decay and learning rate. This is the authors' code
    (``normuon_update``: torch's ``(out, in)`` weight rows are dlopt's output columns;
    the update keeps its pre-normalization norm, so ``learning_rate`` means what it means
    for `muon`, 0.02 in the reference). Deliberate differences from the reference: the
    momentum is bias-corrected (optax's `muon`, ``nesterov=True`` as there), which only
    changes the first steps' mix of gradient and momentum; the iteration runs in float32,
    not bfloat16; the extra state is `dlopt.optimizers.muon_scaling.NorMuonState` (float32,
    one entry per output neuron) in the ``"muon"`` group's chain.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.normuon(0.02, beta2=0.95, weight_decay=0.01)
        >>> state = tx.init({"Dense_0": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}})

    References:
        Li et al., 2025, "NorMuon: Making Muon more efficient and scalable",
        arXiv:2510.05491; the authors' implementation, github.com/zichongli5/NorMuon
        (normuon.py).
    """,
    normalize="neuron",
)
