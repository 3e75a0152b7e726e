"""A US QWERTY layout as a neighbour table over ASCII code points, for ``dlopt.data.text.keyboard``.

Keys sit on four staggered rows (the offsets of a standard keyboard, in key widths); two
keys are neighbours when they are next to each other on a row, or on adjacent rows less than
one key width apart. A character's typos are the characters of its neighbouring keys: the
model of nlpaug's ``KeyboardAug`` (one keyboard distance), with the layout written out here.
"""

from __future__ import annotations

import numpy as np

# (row offset in key widths, unshifted keys, the same keys shifted)
ROWS = (
    (1.0, "1234567890-=", "!@#$%^&*()_+"),
    (1.5, "qwertyuiop[]", "QWERTYUIOP{}"),
    (1.75, "asdfghjkl;'", 'ASDFGHJKL:"'),
    (2.25, "zxcvbnm,./", "ZXCVBNM<>?"),
)


def _keys() -> list[tuple[float, int, str, str]]:
    """Every key as (x position, row, unshifted char, shifted char)."""
    return [
        (offset + i, row, lo, hi)
        for row, (offset, lows, highs) in enumerate(ROWS)
        for i, (lo, hi) in enumerate(zip(lows, highs, strict=True))
    ]


def qwerty_neighbours(
    *, upper_case: bool = True, numeric: bool = True, special_char: bool = True
) -> dict[str, list[str]]:
    """``{char: [typos]}``: the characters on the keys next to ``char``'s key.

    Args:
      upper_case: letters' typos include upper-case letters, and upper-case letters get typos.
      numeric: digits can be typos and get typos.
      special_char: punctuation can be typos and gets typos.

    Example:
      >>> from dlopt.data.qwerty import qwerty_neighbours
      >>> qwerty_neighbours()["g"]
      ['B', 'F', 'H', 'T', 'V', 'Y', 'b', 'f', 'h', 't', 'v', 'y']
    """

    def allowed(ch: str) -> bool:
        if ch.isalpha():
            return ch.islower() or upper_case
        return numeric if ch.isdigit() else special_char

    keys = _keys()
    table: dict[str, list[str]] = {}
    for x, row, lo, hi in keys:
        near = {
            c
            for x2, row2, lo2, hi2 in keys
            if (row2 == row and abs(x2 - x) == 1) or (abs(row2 - row) == 1 and abs(x2 - x) < 1)
            for c in (lo2, hi2)
            if allowed(c)
        }
        for ch in (lo, hi):
            if allowed(ch) and near:
                table[ch] = sorted(near - {ch})
    return table


def qwerty_table(
    *, upper_case: bool = True, numeric: bool = True, special_char: bool = True
) -> np.ndarray:
    """``qwerty_neighbours`` as an int32 ``(128, k)`` table of code points, padded with -1.

    Row ``c`` lists the typos of ``chr(c)``; characters off the layout have an empty row.
    """
    neighbours = qwerty_neighbours(
        upper_case=upper_case, numeric=numeric, special_char=special_char
    )
    width = max(len(v) for v in neighbours.values())
    table = np.full((128, width), -1, np.int32)
    for ch, typos in neighbours.items():
        table[ord(ch), : len(typos)] = [ord(t) for t in typos]
    return table
