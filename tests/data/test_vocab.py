"""dlopt.data.vocab: fitting, encode/decode round trips, code points, candidate tables."""

import numpy as np
import pytest

import dlopt.data as data

CORPUS = ["The film was good.", "the plot was bad", "A good, good film!"]


def test_fit_orders_by_frequency_then_alphabet():
    vocab = data.Vocab.fit(CORPUS)
    assert vocab.words[:2] == ("<pad>", "<unk>")
    assert vocab.words[2:5] == ("good", "film", "the")  # 3, 2, 2 (ties alphabetical)
    assert len(data.Vocab.fit(CORPUS, max_size=3)) == 5
    assert "a" not in data.Vocab.fit(CORPUS, min_count=2).index
    assert data.Vocab.fit(CORPUS, extra=["Great"]).words[-1] == "great"


def test_encode_decode_round_trip_with_padding_truncation_and_unknowns():
    vocab = data.Vocab.fit(CORPUS)
    ids, lengths = vocab.encode(["the film was good", "an unseen word", "a " * 10], max_len=6)
    assert ids.dtype == lengths.dtype == np.int32 and ids.shape == (3, 6)
    np.testing.assert_array_equal(lengths, [4, 3, 6])
    assert np.all(ids[0, 4:] == vocab.pad_id) and list(ids[1]).count(vocab.unk_id) == 3
    assert vocab.decode(ids, lengths)[0] == "the film was good"
    assert vocab.decode(ids)[1] == "<unk> <unk> <unk>"
    assert vocab.decode(ids[0], lengths[:1]) == ["the film was good"]
    cased = data.Vocab.fit(["Good"], lower=False)
    assert cased.lookup(["Good", "good"]) == [2, cased.unk_id]


def test_characters_round_trip():
    codes, lengths = data.encode_chars(["héllo, wörld", ""], max_len=20)
    assert codes.dtype == np.int32 and codes[0, 1] == ord("é")
    assert data.decode_chars(codes, lengths) == ["héllo, wörld", ""]
    assert data.decode_chars(*data.encode_chars(["abcdef"], 3)) == ["abc"]


def test_candidate_table():
    vocab = data.Vocab.fit(["good great fine bad poor"])
    g, gr, f, b, p = vocab.lookup(["good", "great", "fine", "bad", "poor"])
    mapping = {"good": ["great", "fine", "good", "unknown"], "bad": ["poor"], "missing": ["bad"]}
    table = data.candidate_table(mapping, vocab)
    assert table.shape == (len(vocab), 2) and table.dtype == np.int32
    assert list(table[g]) == [gr, f] and list(table[b]) == [p, -1]
    assert np.all(table[gr] == -1)  # not symmetric by default
    table = data.candidate_table(mapping, vocab, symmetric=True, max_candidates=1)
    assert list(table[g]) == [gr] and list(table[gr]) == [g] and list(table[p]) == [b]
    assert data.candidate_table({}, vocab).shape == (len(vocab), 1)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda v: v.encode("one string", 4), TypeError, r"wrap it: \[text\]"),
        (lambda v: v.encode([1], 4), TypeError, "texts must hold strings"),
        (lambda v: v.encode(["a"], 0), ValueError, "max_len must be a positive int"),
        (lambda v: data.encode_chars(["a"], 2.5), ValueError, "max_len must be a positive int"),
        (lambda v: data.Vocab.fit(["a"], min_count=0), ValueError, "min_count must be"),
        (lambda v: data.Vocab.fit(["a"], max_size=-1), ValueError, "max_size must be"),
        (lambda v: data.Vocab(("a", "b")), ValueError, "must start with '<pad>', '<unk>'"),
        (lambda v: data.candidate_table({"a": "b"}, v), TypeError, "must be a list of words"),
        (lambda v: data.candidate_table({}, v, max_candidates=0), ValueError, "max_candidates"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(data.Vocab.fit(CORPUS))
