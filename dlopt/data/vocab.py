"""Host-side text <-> padded ids for ``dlopt.data.text`` and ``dlopt.data.typos``.

Plain Python and numpy, run once over a corpus before training (not jit-able):

- ``Vocab``: a word-level vocabulary fitted on a corpus; ``encode`` gives padded int32 ids
  and lengths, ``decode`` reads them back.
- ``encode_chars``/``decode_chars``: strings as padded Unicode code points (the character
  ids of ``dlopt.data.typos``).
- ``candidate_table``: a ``{word: [words]}`` dictionary (synonyms, antonyms, misspellings)
  as the ``[vocab, k]`` table ``dlopt.data.text.table_substitute`` draws from.

Example:
  >>> from dlopt.data.vocab import Vocab
  >>> vocab = Vocab.fit(["the film was good", "the plot was bad"])
  >>> ids, lengths = vocab.encode(["the film was bad"], max_len=6)
  >>> ids, lengths  # padded with vocab.pad_id
  (array([[2, 5, 3, 4, 0, 0]], dtype=int32), array([4], dtype=int32))
  >>> vocab.decode(ids, lengths)
  ['the film was bad']
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

TOKEN = re.compile(r"\w+|[^\w\s]")
PAD, UNK = "<pad>", "<unk>"


def tokenize(text: str, lower: bool = True) -> list[str]:
    """Words (runs of word characters) and single punctuation marks, lower-cased by default."""
    return TOKEN.findall(text.lower() if lower else text)


def _check_texts(texts: Iterable[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got one str; wrap it: [text].")
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must hold strings, got {type(bad[0]).__name__} {bad[0]!r}.")
    return texts


def _check_max_len(max_len: int) -> None:
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int (the padded length T), got {max_len=}.")


@dataclasses.dataclass(frozen=True)
class Vocab:
    """A word vocabulary: id ``i`` is ``words[i]``; ``<pad>`` is 0 and ``<unk>`` is 1.

    Attributes:
      words: every word by id, the two specials first.
      lower: whether text is lower-cased before lookup.
    """

    words: tuple[str, ...]
    lower: bool = True
    index: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    pad_id = 0
    unk_id = 1

    def __post_init__(self):
        if self.words[:2] != (PAD, UNK) or len(set(self.words)) != len(self.words):
            raise ValueError("words must start with '<pad>', '<unk>' and hold no duplicates.")
        object.__setattr__(self, "index", {w: i for i, w in enumerate(self.words)})

    @classmethod
    def fit(
        cls,
        texts: Iterable[str],
        *,
        max_size: int | None = None,
        min_count: int = 1,
        extra: Iterable[str] = (),
        lower: bool = True,
    ) -> Vocab:
        """The words of ``texts``, most frequent first (ties alphabetical), then ``extra``.

        Args:
          texts: the corpus, a list of strings.
          max_size: keep at most this many corpus words (specials and ``extra`` come on top).
          min_count: drop corpus words seen fewer times.
          extra: words always included, e.g. the synonyms or misspellings of a table.
          lower: lower-case the text first.
        """
        if max_size is not None and (not isinstance(max_size, int) or max_size < 0):
            raise ValueError(f"max_size must be an int >= 0 or None, got {max_size=}.")
        if not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {min_count=}.")
        counts = Counter(tok for text in _check_texts(texts) for tok in tokenize(text, lower))
        ranked = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        words = [PAD, UNK, *ranked[:max_size]]
        seen = set(words)
        for word in extra:
            word = word.lower() if lower else word
            if word not in seen:
                words.append(word)
                seen.add(word)
        return cls(tuple(words), lower)

    def __len__(self) -> int:
        return len(self.words)

    def lookup(self, words: Iterable[str]) -> list[int]:
        """The ids of ``words`` (``unk_id`` for unknown ones)."""
        return [self.index.get(w.lower() if self.lower else w, self.unk_id) for w in words]

    def encode(self, texts: Iterable[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokenizes and looks up each text: int32 ``ids (N, max_len)`` and ``lengths (N,)``.

        Texts longer than ``max_len`` tokens are truncated; the rest is ``pad_id``.
        """
        _check_max_len(max_len)
        texts = _check_texts(texts)
        ids = np.full((len(texts), max_len), self.pad_id, np.int32)
        lengths = np.zeros(len(texts), np.int32)
        for i, text in enumerate(texts):
            row = self.lookup(tokenize(text, self.lower))[:max_len]
            ids[i, : len(row)] = row
            lengths[i] = len(row)
        return ids, lengths

    def decode(self, ids: np.ndarray, lengths: np.ndarray | None = None) -> list[str]:
        """Each row's first ``lengths[i]`` ids (all non-pad ids if None), joined by spaces."""
        ids = np.asarray(ids)
        ids = ids[None] if ids.ndim == 1 else ids
        out = []
        for i, row in enumerate(ids):
            row = row[: int(lengths[i])] if lengths is not None else row[row != self.pad_id]
            out.append(" ".join(self.words[j] if 0 <= j < len(self) else UNK for j in row))
        return out


def encode_chars(texts: Iterable[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Texts as int32 Unicode code points ``(N, max_len)``, padded with 0, and ``lengths``."""
    _check_max_len(max_len)
    texts = _check_texts(texts)
    codes = np.zeros((len(texts), max_len), np.int32)
    lengths = np.zeros(len(texts), np.int32)
    for i, text in enumerate(texts):
        row = [ord(c) for c in text[:max_len]]
        codes[i, : len(row)] = row
        lengths[i] = len(row)
    return codes, lengths


def decode_chars(codes: np.ndarray, lengths: np.ndarray) -> list[str]:
    """The inverse of ``encode_chars``: each row's first ``lengths[i]`` code points."""
    codes = np.asarray(codes)
    codes = codes[None] if codes.ndim == 1 else codes
    return [
        "".join(map(chr, row[: int(n)])) for row, n in zip(codes, np.ravel(lengths), strict=True)
    ]


def candidate_table(
    mapping: Mapping[str, Sequence[str]],
    vocab: Vocab,
    *,
    symmetric: bool = False,
    max_candidates: int | None = None,
) -> np.ndarray:
    """A ``{word: [replacements]}`` dictionary as an int32 ``[len(vocab), k]`` table.

    Row ``vocab.lookup([w])`` lists the ids of ``w``'s replacements, padded with -1. Words
    or replacements missing from the vocabulary are dropped (fit it with
    ``extra=replacements`` to keep them), as are self-replacements and duplicates.

    Args:
      mapping: e.g. WordNet synonyms or antonyms, or a misspelling list.
      symmetric: also map each replacement back to its word (nlpaug's ``include_reverse``).
      max_candidates: keep at most this many per word (in the mapping's order).

    Example:
      >>> from dlopt.data.vocab import Vocab, candidate_table
      >>> vocab = Vocab.fit(["good bad great"])
      >>> table = candidate_table({"good": ["great", "fine"]}, vocab)  # "fine" is unknown
      >>> table[vocab.lookup(["good"])[0]]
      array([4], dtype=int32)
    """
    if max_candidates is not None and (not isinstance(max_candidates, int) or max_candidates < 1):
        raise ValueError(f"max_candidates must be an int >= 1 or None, got {max_candidates=}.")
    known = lambda w: vocab.index.get(w.lower() if vocab.lower else w)  # noqa: E731
    rows: dict[int, list[int]] = {}
    for word, replacements in mapping.items():
        if isinstance(replacements, str):
            raise TypeError(
                f"mapping[{word!r}] must be a list of words, got the str {replacements!r}."
            )
        src = known(word)
        for rep in replacements:
            dst = known(rep)
            if src is None or dst is None or src == dst:
                continue
            for a, b in ((src, dst), (dst, src)) if symmetric else ((src, dst),):
                row = rows.setdefault(a, [])
                if b not in row:
                    row.append(b)
    rows = {k: v[:max_candidates] for k, v in rows.items()}
    width = max((len(v) for v in rows.values()), default=1)
    table = np.full((len(vocab), width), -1, np.int32)
    for k, v in rows.items():
        table[k, : len(v)] = v
    return table
