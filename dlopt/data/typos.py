"""Character-level text augmentation (typos) on ONE padded sequence of character ids.

The conventions of ``dlopt.data.text`` (``(key, chars, length) -> (chars, length)``, jit-able,
``jax.vmap`` for a batch, nlpaug's count rule) on Unicode code points
(``dlopt.data.vocab.encode_chars``). As in nlpaug's character augmenters the choice has two
levels: nlpaug's count over the number of words (``aug_word_p``, ``aug_word_min``,
``aug_word_max``) of the words at least ``min_char`` long, then in each of them the count
over its length (``aug_char_*``) of its candidate characters. A word is a maximal run of
characters not in ``separators`` (whitespace and ASCII punctuation by default, close to
nlpaug's ``\\W`` split; nlpaug counts punctuation tokens as words, here they are not).

Deliberate difference: ``random_char(action="swap")`` moves a character with its case
(nlpaug keeps each position's case).
"""

from __future__ import annotations

import string
from functools import cache, partial
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
    words,
)
from dlopt.data.qwerty import qwerty_table

Augmented = tuple[jax.Array, jax.Array]  # (ids, length)
CHAR_ACTIONS = ("insert", "substitute", "swap", "delete")
SEPARATORS = tuple(ord(c) for c in string.whitespace + string.punctuation)
# nlpaug RandomCharAug's default candidates: upper, lower, digits and its spec_char.
RANDOM_CHARS = tuple(
    ord(c) for c in string.ascii_uppercase + string.ascii_lowercase + string.digits + "!@#$%^&*()_+"
)


@cache
def _qwerty() -> jax.Array:
    return jnp.asarray(qwerty_table())


def _rules(size: int, chars: jax.Array, rules: tuple, min_char: Any, separators: Any):
    """The checked count tables (characters, words), ``min_char`` and separators as arrays."""
    char_p, char_min, char_max, word_p, word_min, word_max = rules
    names = ("aug_char_p", "aug_char_min", "aug_char_max")
    char_counts = count_table(size, char_p, char_min, char_max, names)
    names = ("aug_word_p", "aug_word_min", "aug_word_max")
    word_counts = count_table(size, word_p, word_min, word_max, names)
    check_int("min_char", min_char, low=1)
    seps = as_int_array("separators", separators, 1, chars.dtype, empty_ok=True)
    return char_counts, word_counts, jnp.asarray(min_char, jnp.int32), seps


def _pick_chars(u, chars, length, char_ok, char_counts, word_counts, min_char, seps):
    """nlpaug's two-level choice: words (>= ``min_char`` long), then characters within each.

    ``u``: ``(2, T)`` U(0, 1) draws. Returns ``choose``'s ``(chosen, order, picked)`` over
    characters, the word index of each position and the in-word mask.
    """
    size = chars.shape[0]
    word, word_len, in_word = words(chars, length, seps)
    word_ok = word_len >= min_char
    n_words = jnp.sum(word_len > 0)
    chosen_word = choose(u[0], word_ok, jnp.minimum(word_counts[n_words], jnp.sum(word_ok)))[0]
    w = jnp.minimum(word, size - 1)
    candidate = in_word & chosen_word[w] & char_ok
    return choose(u[1], candidate, char_counts[word_len], group=w), word, in_word


def keyboard(
    key: chex.PRNGKey,
    chars: chex.Array,
    length: chex.Numeric,
    table: chex.Array | None = None,
    *,
    aug_char_p: float = 0.3,
    aug_char_min: int = 1,
    aug_char_max: int | None = 10,
    aug_word_p: float = 0.3,
    aug_word_min: int = 1,
    aug_word_max: int | None = 10,
    min_char: int = 4,
    separators: Any = SEPARATORS,
) -> Augmented:
    """Keyboard typos (nlpaug's ``KeyboardAug``): characters become a neighbouring key's.

    Words at least ``min_char`` long are candidates; nlpaug's count over the number of words
    (``aug_word_*``) of them are picked, then in each picked word the count over its length
    (``aug_char_*``) of its characters that have typos, each replaced by a uniform draw from
    its row of ``table`` (code point -> typos, padded with -1; default
    ``dlopt.data.qwerty.qwerty_table()``). A replaced character always changes.

    Args:
      key, length: as in ``dlopt.data.text.random_word``.
      chars: int ``(T,)`` Unicode code points (``dlopt.data.vocab.encode_chars``).
      table: int ``(vocab, k)`` typo table over code points.
      aug_char_p, aug_char_min, aug_char_max: the count rule for characters within a word.
      aug_word_p, aug_word_min, aug_word_max: the count rule for words.
      min_char: shorter words are never changed.
      separators: code points that split words (whitespace and ASCII punctuation).

    Returns:
      ``(chars, length)``, the length unchanged.

    References:
      Belinkov & Bisk, "Synthetic and Natural Noise Both Break Neural Machine Translation",
      ICLR 2018.
    """
    chars, length = check_sequence(chars, length)
    table = as_int_array("table", _qwerty() if table is None else table, 2, chars.dtype)
    rules = (aug_char_p, aug_char_min, aug_char_max, aug_word_p, aug_word_min, aug_word_max)
    rules = _rules(chars.shape[0], chars, rules, min_char, separators)
    return _keyboard(draws(key, chars.shape[0]), chars, length, table, *rules)


@jax.jit
def _keyboard(u, chars, length, table, *rules) -> Augmented:
    new, has = draw_from_table(u[2], table, chars)
    (chosen, _, _), _, _ = _pick_chars(u, chars, length, has, *rules)
    return jnp.where(chosen, new, chars), length


def random_char(
    key: chex.PRNGKey,
    chars: chex.Array,
    length: chex.Numeric,
    *,
    action: str,
    candidates: Any = RANDOM_CHARS,
    aug_char_p: float = 0.3,
    aug_char_min: int = 1,
    aug_char_max: int | None = 10,
    aug_word_p: float = 0.3,
    aug_word_min: int = 1,
    aug_word_max: int | None = 10,
    min_char: int = 4,
    separators: Any = SEPARATORS,
    pad_id: int = 0,
) -> Augmented:
    """Random character noise within words (nlpaug's ``RandomCharAug``).

    Words and characters are picked as in ``keyboard`` (every character is a candidate);
    then each picked character gets, by ``action``: ``"insert"`` a draw from ``candidates``
    before it, ``"substitute"`` replaced by a draw, ``"swap"`` swapped (in turn) with its
    left or right neighbour in the word, ``"delete"`` removed. Characters pushed past ``T``
    by insertions are dropped.

    Args:
      key, chars, length, aug_*, min_char, separators: as in ``keyboard``.
      action: one of ``CHAR_ACTIONS`` (static).
      candidates: the code points to insert or substitute (nlpaug's default set).
      pad_id: the padding id written after the new length.

    Returns:
      ``(chars, length)``.

    References:
      Belinkov & Bisk, ICLR 2018.
    """
    if action not in CHAR_ACTIONS:
        raise ValueError(f"action must be one of {CHAR_ACTIONS}, got {action=}.")
    chars, length = check_sequence(chars, length)
    check_int("pad_id", pad_id, low=-(2**31))
    cands = as_int_array("candidates", candidates, 1, chars.dtype)
    rules = (aug_char_p, aug_char_min, aug_char_max, aug_word_p, aug_word_min, aug_word_max)
    rules = _rules(chars.shape[0], chars, rules, min_char, separators)
    u = draws(key, chars.shape[0])
    return _random_char(u, chars, length, cands, *rules, action=action, pad_id=pad_id)


@partial(jax.jit, static_argnames=("action", "pad_id"))
def _random_char(u, chars, length, cands, *rules, action, pad_id) -> Augmented:
    size = chars.shape[0]
    everything = jnp.ones(size, bool)
    (chosen, order, picked), word, in_word = _pick_chars(u, chars, length, everything, *rules)
    new = cands[uniform_int(u[2], cands.shape[0])]
    no_edit = jnp.zeros(size, bool)
    if action == "substitute":
        return jnp.where(chosen, new, chars), length
    if action == "insert":
        return apply_edits(chars, length, no_edit, chosen, new, pad_id)
    if action == "delete":
        return apply_edits(chars, length, chosen, no_edit, chars, pad_id)
    prev, nxt = neighbours(word, in_word)
    return swap_in_order(u[3], chars, order, picked, prev, nxt), length
