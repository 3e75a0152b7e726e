"""Text augmentation on padded token ids: nlpaug's augmenters as jit-able JAX functions.

Each function augments ONE sequence: ``ids`` (integer, shape ``(T,)``, padded with
``pad_id``) with its true ``length``, and returns ``(ids, length)`` of the same shape and
dtype. Randomness comes only from ``key``; ``action`` and the count hyperparameters are
static, ``length`` may be traced. ``jax.vmap`` with one key per example makes the batch
version, inside a jitted input pipeline or train step::

    keys = jax.random.split(key, ids.shape[0])
    aug = jax.vmap(partial(random_word, action="delete", aug_p=0.2))
    ids, lengths = jax.jit(aug)(keys, ids, lengths)

How many positions change follows nlpaug's ``Augmenter.generate_aug_cnt`` exactly:
``n = clamp(ceil(aug_p * length), aug_min, aug_max)`` (0 for an empty sequence), then at
most the number of candidates; ``aug_max=None`` is no cap. The ``n`` candidates are picked
uniformly without replacement.

=====================  ==========================================================
nlpaug                 dlopt
=====================  ==========================================================
RandomWordAug          ``random_word`` (swap, substitute, delete, crop; + insert)
SynonymAug, AntonymAug ``table_substitute`` with a ``[vocab, k]`` table (WordNet's
                       synonyms or antonyms, or any ``{word: [words]}`` through
                       ``dlopt.data.vocab.candidate_table``)
SpellingAug            ``spelling``: ``table_substitute`` with a misspelling table
KeyboardAug            ``dlopt.data.typos.keyboard`` on character ids
RandomCharAug          ``dlopt.data.typos.random_char`` on character ids
ContextualWordEmbsAug  ``contextual_substitute`` around YOUR masked language model
BackTranslationAug     not here: see below
=====================  ==========================================================

Deliberate differences from nlpaug: ids in ``skip_ids`` (nlpaug's stopwords) never change
or move, for every action: ``swap`` exchanges adjacent *candidates* and ``crop`` removes a
run of consecutive candidates (nlpaug swaps with a stopword and ``crop`` ignores
stopwords). nlpaug's edge-case bugs are not copied: its ``crop`` fails for a count of 1 and,
cropping leftwards, can index past the start; deleting words 0 and 1 together puts word 1
back (capitalization alignment). A one-word sentence is left alone by ``delete`` and
``crop``, as in nlpaug. ``aug_p=0`` means 0 (nlpaug reads it as 0.3) and ``aug_max=0``
means at most 0 (nlpaug: no cap). Ids, not strings: no capitalization is aligned.

Back-translation and contextual substitution need translation or language models that
cannot ship with dlopt (nor be downloaded here). ``contextual_substitute`` takes your
masked LM as ``predict(ids) -> logits (T, vocab)``; back-translation is your own
``generate(ids) -> ids`` (e.g. English -> German -> English) applied to the batch before
or after these functions: nothing here pretends to be one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import chex
import jax
import jax.numpy as jnp

from dlopt.core.validation import check_int
from dlopt.data.edits import (
    apply_edits,
    as_int_array,
    check_sequence,
    choose,
    count_table,
    draw_from_table,
    draws,
    neighbours,
    swap_in_order,
    uniform_int,
)

Augmented = tuple[jax.Array, jax.Array]  # (ids, length)
WORD_ACTIONS = ("swap", "substitute", "delete", "crop", "insert")


def _skip(skip_ids: Any, dtype: Any) -> jax.Array:
    return as_int_array("skip_ids", skip_ids, 1, dtype, empty_ok=True)


def random_word(
    key: chex.PRNGKey,
    ids: chex.Array,
    length: chex.Numeric,
    *,
    action: str,
    aug_p: float = 0.3,
    aug_min: int = 1,
    aug_max: int | None = 10,
    skip_ids: Any = (),
    substitutes: Any = None,
    pad_id: int = 0,
) -> Augmented:
    """nlpaug's ``RandomWordAug`` on token ids: swap, substitute, delete, crop, or insert.

    With ``n`` = nlpaug's count over ``length`` tokens, capped at the number of candidates
    (live tokens not in ``skip_ids``):

    - ``"swap"``: ``n`` times, in turn, a random candidate trades places with its left or
      right candidate neighbour (the first/last one with its only neighbour).
    - ``"substitute"``: ``n`` candidates become ids drawn uniformly from ``substitutes``
      (nlpaug's ``target_words``).
    - ``"delete"``: ``n`` candidates are removed; the rest shift left.
    - ``"crop"``: a run of ``n`` consecutive candidates, at a uniform start, is removed.
    - ``"insert"``: an id drawn from ``substitutes`` goes in before each of ``n`` candidates
      (``n`` is also capped at the free room ``T - length``).

    Args:
      key: a ``jax.random`` key.
      ids: int ``(T,)`` token ids, ``pad_id`` from ``length`` on.
      length: the true length (int scalar, may be traced).
      action: one of ``WORD_ACTIONS`` (static).
      aug_p, aug_min, aug_max: the count rule (static); ``aug_max=None`` for no cap.
      skip_ids: ids never changed or moved (stopwords, special tokens such as ``[CLS]``).
      substitutes: 1-d ids to draw from, for ``"substitute"`` and ``"insert"``.
      pad_id: the padding id written after a shortened sequence.

    Returns:
      ``(ids, length)``: the augmented ids (same shape and dtype) and the new length.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from dlopt.data.text import random_word
      >>> ids, n = random_word(jax.random.key(0), jnp.array([5, 6, 7, 8, 0, 0]), 4,
      ...                      action="delete", aug_p=0.5)
      >>> int(n)
      2

    References:
      Ma, "NLP Augmentation", https://github.com/makcedward/nlpaug, 2019; Wei & Zou, "EDA:
      Easy Data Augmentation Techniques for Boosting Performance on Text Classification
      Tasks", EMNLP 2019.
    """
    if action not in WORD_ACTIONS:
        raise ValueError(f"action must be one of {WORD_ACTIONS}, got {action=}.")
    ids, length = check_sequence(ids, length)
    check_int("pad_id", pad_id, low=-(2**31))
    if action in ("substitute", "insert") and substitutes is None:
        raise ValueError(
            f"action={action!r} draws new ids from substitutes; pass substitutes=[ids] "
            "(nlpaug's target_words)."
        )
    subs = as_int_array("substitutes", substitutes, 1, ids.dtype, empty_ok=substitutes is None)
    counts = count_table(ids.shape[0], aug_p, aug_min, aug_max)
    skip = _skip(skip_ids, ids.dtype)
    u = draws(key, ids.shape[0])
    return _random_word(u, ids, length, counts, subs, skip, action=action, pad_id=pad_id)


# One compiled program per action and shapes (aug_p, skip_ids, substitutes are arguments):
# eager calls reuse it across hyperparameters; an enclosing jit inlines it.
@partial(jax.jit, static_argnames=("action", "pad_id"))
def _random_word(u, ids, length, counts, subs, skip, *, action, pad_id) -> Augmented:
    size = ids.shape[0]
    u_pick, u_new, u_move = u[0], u[1], u[2]
    candidate = (jnp.arange(size) < length) & ~jnp.isin(ids, skip)
    n_cand = jnp.sum(candidate)
    count = jnp.minimum(counts[length], n_cand)
    no_edit = jnp.zeros(size, bool)
    new = subs[uniform_int(u_new, subs.shape[0])] if subs.size else ids

    if action == "swap":
        _, order, picked = choose(u_pick, candidate, jnp.where(n_cand < 2, 0, count))
        prev, nxt = neighbours(jnp.zeros(size, jnp.int32), candidate)
        return swap_in_order(u_move, ids, order, picked, prev, nxt), length
    if action == "substitute":
        chosen = choose(u_pick, candidate, count)[0]
        return jnp.where(chosen, new, ids), length
    if action == "insert":
        chosen = choose(u_pick, candidate, jnp.minimum(count, size - length))[0]
        return apply_edits(ids, length, no_edit, chosen, new, pad_id)
    count = jnp.where(length < 2, 0, count)
    if action == "delete":
        chosen = choose(u_pick, candidate, count)[0]
        return apply_edits(ids, length, chosen, no_edit, ids, pad_id)
    rank = jnp.cumsum(candidate) - 1  # crop
    start = uniform_int(u_pick[0], n_cand - count + 1)
    span = candidate & (rank >= start) & (rank < start + count)
    return apply_edits(ids, length, span, no_edit, ids, pad_id)


def table_substitute(
    key: chex.PRNGKey,
    ids: chex.Array,
    length: chex.Numeric,
    table: chex.Array,
    *,
    aug_p: float = 0.3,
    aug_min: int = 1,
    aug_max: int | None = 10,
    skip_ids: Any = (),
) -> Augmented:
    """Replaces ``n`` tokens with a uniform draw from their row of a candidate table.

    nlpaug's ``SynonymAug``/``AntonymAug`` (and ``SpellingAug``) with the dictionary as an
    int ``[vocab, k]`` table: row ``v`` lists the ids that may replace ``v``, padded with -1.
    A token without candidates (an empty row, or an id past the table) is not a candidate;
    ``n`` is nlpaug's count over ``length``, capped at the number of candidates.

    Args:
      key, ids, length, aug_p, aug_min, aug_max, skip_ids: as in ``random_word``.
      table: int ``[vocab, k]``, e.g. from ``dlopt.data.vocab.candidate_table``.

    Returns:
      ``(ids, length)``, the length unchanged.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from dlopt.data.text import table_substitute
      >>> table = jnp.array([[-1, -1], [2, 3], [1, -1], [-1, -1]])  # 1 <-> 2, 1 -> 3
      >>> table_substitute(jax.random.key(0), jnp.array([1, 0]), 1, table)[0]  # [2 or 3, 0]
      Array([2, 0], dtype=int32)

    References:
      Miller, "WordNet: A Lexical Database for English", CACM 1995; Wei & Zou, EMNLP 2019.
    """
    ids, length = check_sequence(ids, length)
    table = as_int_array("table", table, 2, ids.dtype)
    counts = count_table(ids.shape[0], aug_p, aug_min, aug_max)
    skip = _skip(skip_ids, ids.dtype)
    return _table_substitute(draws(key, ids.shape[0]), ids, length, counts, table, skip)


@jax.jit
def _table_substitute(u, ids, length, counts, table, skip) -> Augmented:
    u_pick, u_new = u[0], u[1]
    new, has = draw_from_table(u_new, table, ids)
    candidate = (jnp.arange(ids.shape[0]) < length) & has & ~jnp.isin(ids, skip)
    chosen = choose(u_pick, candidate, jnp.minimum(counts[length], jnp.sum(candidate)))[0]
    return jnp.where(chosen, new, ids), length


def spelling(key: chex.PRNGKey, ids: chex.Array, length: chex.Numeric, table: chex.Array, **kw):
    """Spelling mistakes (nlpaug's ``SpellingAug``): ``table_substitute`` with a table of
    misspellings, row ``v`` = the ids of common misspellings of word ``v``.

    Build the table with ``candidate_table(misspellings, vocab, symmetric=True)`` (nlpaug's
    ``include_reverse``) from a vocabulary fitted with the misspelled words as ``extra``.
    """
    return table_substitute(key, ids, length, table, **kw)


def contextual_substitute(
    key: chex.PRNGKey,
    ids: chex.Array,
    length: chex.Numeric,
    predict: Callable[[jax.Array], jax.Array],
    *,
    mask_id: int,
    aug_p: float = 0.3,
    aug_min: int = 1,
    aug_max: int | None = 10,
    skip_ids: Any = (),
) -> Augmented:
    """nlpaug's ``ContextualWordEmbsAug`` (substitute) around YOUR masked language model.

    ``n`` candidates are replaced by ``mask_id``; ``predict(masked_ids) -> logits (T, V)``
    (a BERT-style model, jit-able if this call is jitted) scores every position, and each
    masked token is resampled from its softmax, the original token excluded.
    """
    ids, length = check_sequence(ids, length)
    check_int("mask_id", mask_id)
    counts = count_table(ids.shape[0], aug_p, aug_min, aug_max)
    u = draws(key, ids.shape[0])
    chosen = _pick_tokens(u[0], ids, length, counts, _skip(skip_ids, ids.dtype))
    logits = predict(jnp.where(chosen, jnp.asarray(mask_id, ids.dtype), ids))
    if logits.ndim != 2 or logits.shape[0] != ids.shape[0]:
        raise ValueError(
            f"predict must return logits (T, vocab) = ({ids.shape[0]}, V), got {logits.shape}."
        )
    return jnp.where(chosen, _resample(u[1], ids, logits), ids), length


@jax.jit
def _pick_tokens(u, ids, length, counts, skip) -> jax.Array:
    candidate = (jnp.arange(ids.shape[0]) < length) & ~jnp.isin(ids, skip)
    return choose(u, candidate, jnp.minimum(counts[length], jnp.sum(candidate)))[0]


@jax.jit
def _resample(u, ids, logits) -> jax.Array:
    """A draw from each row's softmax, the row's own id excluded (inverse CDF at ``u``)."""
    same = jnp.arange(logits.shape[1])[None, :] == ids[:, None]
    probs = jax.nn.softmax(jnp.where(same, -jnp.inf, logits.astype(jnp.float32)), axis=-1)
    cdf = jnp.cumsum(probs, axis=-1)
    new = jnp.sum(cdf < u[:, None] * cdf[:, -1:], axis=-1)
    return jnp.minimum(new, logits.shape[1] - 1).astype(ids.dtype)
