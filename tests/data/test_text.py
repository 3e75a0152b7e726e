"""dlopt.data.text and dlopt.data.typos against nlpaug: counts, invariants, keys, uniformity."""

import random
from collections import Counter
from functools import partial

import chex
import jax
import jax.numpy as jnp
import nlpaug.augmenter.char as nac
import nlpaug.augmenter.word as naw
import numpy as np
import pytest
from scipy import stats

import dlopt.data as data
from dlopt.data import edits

# Every batch is (B, T): the jitted augmenters compile once per action and are reused.
B, T = 80, 64  # 40 words + up to 10 insertions fit
PAD = 0
SKIP = (10, 11, 12)  # "stopwords"
SUBS = (5000, 5001, 5002)  # substitutes, disjoint from the sentences' ids
LENGTHS = np.repeat(np.arange(1, 41), 2)  # B sentences of 1..40 words
WORD = partial(data.random_word, skip_ids=SKIP, substitutes=SUBS)  # one program per action
PS = (0.1, 0.3, 0.5)


def sentences(seed, lengths, low=10, high=40):
    """One padded sentence per length, ids in [low, high) (so some are in SKIP)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(low, high, (len(lengths), T)).astype(np.int32)
    ids[np.arange(T)[None, :] >= np.asarray(lengths)[:, None]] = PAD
    return jnp.asarray(ids), jnp.asarray(lengths, jnp.int32)


def batched(fn, seed=0):
    """``fn`` vmapped over sentences with one key each, eagerly: the augmenter's jitted core
    compiles once per action and shapes, whatever aug_p (a jit around it would not)."""
    return lambda ids, lengths: jax.vmap(fn)(
        jax.random.split(jax.random.key(seed), ids.shape[0]), ids, lengths
    )


def nlpaug_count(n, p, aug_min=1, aug_max=10):
    return naw.RandomWordAug(aug_p=p, aug_min=aug_min, aug_max=aug_max).generate_aug_cnt(n)


def skipped_subsequence(row, n):
    return [int(t) for t in row[:n] if t in SKIP]


@pytest.fixture(scope="module", params=PS)
def word_runs(request):
    """Every action at one aug_p on sentences of 1..40 words: inputs, outputs, expected count."""
    p = request.param
    ids, lengths = sentences(int(p * 10), LENGTHS)
    n_cand = np.sum((np.asarray(ids) >= 13) & (np.arange(T) < np.asarray(lengths)[:, None]), 1)
    rule = np.array([nlpaug_count(int(n), p) for n in lengths])
    runs = {}
    for action in data.text.WORD_ACTIONS:
        fn = partial(WORD, action=action, aug_p=p)
        out, new_len = batched(fn)(ids, lengths)
        runs[action] = (np.asarray(out), np.asarray(new_len))
    return np.asarray(ids), np.asarray(lengths), n_cand, rule, runs


def test_counts_follow_nlpaug_rule(word_runs):
    ids, lengths, n_cand, rule, runs = word_runs
    expected = np.minimum(rule, n_cand)  # nlpaug: count over all tokens, capped at candidates
    short = lengths < 2  # nlpaug leaves a one-word sentence alone (delete, crop)
    out, new_len = runs["substitute"]
    np.testing.assert_array_equal(np.sum(out >= SUBS[0], 1), expected)
    np.testing.assert_array_equal(lengths - runs["delete"][1], np.where(short, 0, expected))
    np.testing.assert_array_equal(lengths - runs["crop"][1], np.where(short, 0, expected))
    np.testing.assert_array_equal(runs["insert"][1] - lengths, expected)
    assert np.all(np.isin(runs["insert"][0], ids) | np.isin(runs["insert"][0], SUBS))


def test_invariants_of_every_action(word_runs):
    ids, lengths, _, _, runs = word_runs
    for action, (out, new_len) in runs.items():
        for i in range(len(ids)):
            n, m = lengths[i], new_len[i]
            assert np.all(out[i, m:] == PAD), (action, i)  # padding intact
            assert skipped_subsequence(out[i], m) == skipped_subsequence(ids[i], n), action
            if action in ("swap", "substitute"):
                np.testing.assert_array_equal(np.isin(out[i], SKIP), np.isin(ids[i], SKIP))
            if action == "swap":  # a permutation of the sentence
                assert sorted(out[i, :n]) == sorted(ids[i, :n])
            if action in ("delete", "crop"):  # a subsequence of the sentence
                it = iter(ids[i, :n].tolist())
                assert all(t in it for t in out[i, :m].tolist())


def test_crop_removes_one_run_of_candidates():
    ids, lengths = sentences(3, LENGTHS, low=13)  # no skipped ids: a contiguous span
    out, new_len = batched(partial(WORD, action="crop", aug_p=0.3))(ids, lengths)
    for row, n, res, m in zip(
        np.asarray(ids), LENGTHS, np.asarray(out), np.asarray(new_len), strict=True
    ):
        c = n - m
        assert c == (0 if n < 2 else nlpaug_count(n, 0.3))  # count 1 works (nlpaug fails)
        starts = [
            s for s in range(n - c + 1) if list(res[:m]) == list(row[:s]) + list(row[s + c : n])
        ]
        assert starts, (row[:n], res[:m])


def test_substitute_count_matches_nlpaug_output_with_stopwords():
    rng = random.Random(0)
    vocab_words = [f"w{i}" for i in range(30)]
    stop = vocab_words[:3]
    vocab = data.Vocab(("<pad>", "<unk>", *vocab_words, "x", "y", "z"))
    skip, subs = vocab.lookup(stop), vocab.lookup(["x", "y", "z"])
    texts = [" ".join(rng.choices(vocab_words, k=int(n))) for n in LENGTHS]
    ids, lengths = vocab.encode(texts, T)
    fn = partial(data.random_word, action="substitute", skip_ids=skip, substitutes=subs)
    out, _ = batched(fn)(jnp.asarray(ids), jnp.asarray(lengths))
    aug = naw.RandomWordAug(action="substitute", stopwords=stop, target_words=["_"])
    for text, row in zip(texts, np.asarray(out), strict=True):
        assert aug.augment(text)[0].split().count("_") == np.isin(row, subs).sum(), text


def test_jit_keys_decide_everything():
    ids, lengths = sentences(1, [30])
    ids, lengths = jnp.tile(ids, (B, 1)), jnp.tile(lengths, B)

    @jax.jit
    @jax.vmap
    @chex.assert_max_traces(n=1)
    def fn(key, ids, length):
        return WORD(key, ids, length, action="swap")

    keys = jax.random.split(jax.random.key(0), B)
    a, b = fn(keys, ids, lengths), fn(keys, ids, lengths[::-1])  # traced lengths, no retrace
    np.testing.assert_array_equal(a[0], b[0])
    assert len({tuple(r) for r in np.asarray(a[0]).tolist()}) == B  # each its own draw
    same = fn(jnp.stack([keys[0]] * B), ids, lengths)[0]
    assert len({tuple(r) for r in np.asarray(same).tolist()}) == 1


@pytest.mark.parametrize("action", ["substitute", "delete"])
def test_changed_positions_are_uniform_over_candidates(action):
    row = np.arange(13, 13 + 12, dtype=np.int32)
    row[[2, 7]] = SKIP[:2]
    ids = jnp.asarray(np.tile(np.pad(row, (0, T - 12)), (B, 1)))
    fn = partial(WORD, action=action, aug_p=0.3)
    runs = [batched(fn, seed)(ids, jnp.full(B, 12, jnp.int32))[0] for seed in range(40)]
    out, n_keys = np.concatenate(runs), 40 * B
    if action == "substitute":
        hits = np.sum(out >= SUBS[0], 0)[:12]
    else:
        hits = np.array([np.sum(~np.any(out == t, 1)) for t in row])
    cand = ~np.isin(row, SKIP)
    assert np.all(hits[~cand] == 0)
    assert hits[cand].sum() == n_keys * min(nlpaug_count(12, 0.3), 10)
    assert stats.chisquare(hits[cand]).pvalue > 1e-3


def test_swap_moves_to_candidate_neighbours_in_turn():
    ids = jnp.asarray(np.pad(np.arange(20, 30, dtype=np.int32), (0, T - 10)))
    fn = partial(WORD, action="swap", aug_p=0.1)  # one swap of neighbours
    out = np.concatenate(
        [batched(fn, s)(jnp.tile(ids, (B, 1)), jnp.full(B, 10, jnp.int32))[0] for s in range(3)]
    )
    moved = out[:, :10] != np.asarray(ids)[:10]
    assert np.all(moved.sum(1) == 2)
    first = np.argmax(moved, 1)
    assert np.all(moved[np.arange(len(out)), first + 1])  # the two moved are adjacent
    assert len(set(first)) == 9  # every neighbouring pair gets a turn


def test_delete_of_first_two_words_keeps_both_out():
    ids = jnp.tile(jnp.pad(jnp.asarray([20, 21, 22], jnp.int32), (0, T - 3)), (B, 1))
    out, n = batched(partial(WORD, action="delete", aug_p=0.6))(ids, jnp.full(B, 3, jnp.int32))
    assert np.all(np.asarray(n) == 1) and np.all(np.asarray(out)[:, 1:] == PAD)
    # deleting words 0 and 1 leaves word 2 alone (nlpaug puts word 1 back)
    assert set(np.asarray(out)[:, 0].tolist()) == {20, 21, 22}


def test_insert_stops_at_the_padded_size():
    ids, lengths = sentences(6, T - np.arange(B) % 4, low=13)
    out, n = batched(partial(WORD, action="insert", aug_p=1.0))(ids, lengths)
    assert np.all(np.asarray(n) == T)  # 0..3 free slots filled, nothing pushed out
    for row, res, free in zip(np.asarray(ids), np.asarray(out), np.arange(B) % 4, strict=True):
        assert list(res[~np.isin(res, SUBS)]) == list(row[: T - free])


def test_table_substitute_draws_from_the_rows():
    table = np.full((40, 3), -1, np.int32)
    table[20:30, :2] = np.stack([np.arange(100, 110), np.arange(200, 210)], 1)
    ids, lengths = sentences(4, LENGTHS)
    out, _ = batched(partial(data.table_substitute, table=table, aug_p=0.5))(ids, lengths)
    ids, out = np.asarray(ids), np.asarray(out)
    live = np.arange(T) < LENGTHS[:, None]
    cand = live & (ids >= 20) & (ids < 30)
    changed = out != ids
    assert not np.any(changed & ~cand)
    np.testing.assert_array_equal(
        changed.sum(1),
        [min(nlpaug_count(n, 0.5), c) for n, c in zip(LENGTHS, cand.sum(1), strict=True)],
    )
    assert np.all((out[changed] - ids[changed]) % 100 == 80)  # 20 -> 100 or 200, ...
    assert 0.4 < np.mean(out[changed] < 200) < 0.6  # both columns drawn


def test_spelling_is_table_substitute():
    table = np.full((40, 3), -1, np.int32)
    table[[2, 3], 0] = [3, 2]  # two misspellings of each other
    ids = jnp.tile(jnp.pad(jnp.asarray([2, 3, 1], jnp.int32), (0, T - 3)), (B, 1))
    a = batched(partial(data.spelling, table=table, aug_p=1.0))(ids, jnp.full(B, 3, jnp.int32))
    b = batched(partial(data.table_substitute, table=table, aug_p=1.0))(
        ids, jnp.full(B, 3, jnp.int32)
    )
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[0][:, :4], np.tile([3, 2, 1, 0], (B, 1)))


def test_contextual_substitute_masks_then_samples_from_the_model():
    seen = []

    def predict(masked):  # a "language model": 7 (or 8 where 7 is the original)
        seen.append(masked)
        return jnp.zeros((T, 50)).at[:, 7].set(30.0).at[:, 8].set(20.0)

    ids, lengths = sentences(5, [20])
    ids = ids[0].at[:5].set(7)
    out, _ = data.contextual_substitute(jax.random.key(0), ids, lengths[0], predict, mask_id=3)
    changed = np.asarray(out != ids)
    assert changed.sum() == nlpaug_count(20, 0.3)
    np.testing.assert_array_equal(np.asarray(seen[0]) == 3, changed)
    everything = partial(data.contextual_substitute, mask_id=3, aug_p=1.0, aug_max=None)
    out, _ = everything(jax.random.key(1), ids, lengths[0], predict)
    np.testing.assert_array_equal(out[:20], [8] * 5 + [7] * 15)  # never the original


# ----- characters -----------------------------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def letter_sentences(seed):
    """B sentences of 1..8 words of 1..7 letters (at most T characters)."""
    rng = random.Random(seed)
    words = lambda k: ["".join(rng.choices(LETTERS, k=rng.randint(1, 7))) for _ in range(k)]  # noqa: E731
    return [" ".join(words(rng.randint(1, 8))) for _ in range(B)]


def char_rule(aug, size, p=0.3):
    return aug._generate_aug_cnt(size, aug.aug_char_min, aug.aug_char_max, p)


def word_rule(aug, words, min_char=4):
    size = aug._generate_aug_cnt(len(words), aug.aug_word_min, aug.aug_word_max, aug.aug_word_p)
    return min(size, sum(len(w) >= min_char for w in words))


def run_chars(fn, texts, seed=0):
    codes, lengths = data.encode_chars(texts, T)
    out, new_len = batched(fn, seed)(jnp.asarray(codes), jnp.asarray(lengths))
    return data.decode_chars(np.asarray(out), np.asarray(new_len))


LETTER_TYPOS = {"special_char": False, "numeric": False}  # typos stay words, for split()
KEYBOARD = partial(data.keyboard, table=data.qwerty_table(**LETTER_TYPOS))


def test_keyboard_counts_match_nlpaug_keyboard_aug():
    texts = letter_sentences(0)
    ours = run_chars(KEYBOARD, texts)
    aug = nac.KeyboardAug(include_special_char=False, include_numeric=False)
    neighbours = data.qwerty.qwerty_neighbours(**LETTER_TYPOS)
    for text, mine in zip(texts, ours, strict=True):
        theirs = aug.augment(text)[0]
        changed = [(a, b) for a, b in zip(text.split(), mine.split(), strict=True) if a != b]
        n_theirs = sum(a != b for a, b in zip(text.split(), theirs.split(), strict=True))
        assert len(changed) == n_theirs == word_rule(aug, text.split()), (text, mine, theirs)
        for a, b in changed:
            diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
            assert len(diff) == min(char_rule(aug, len(a)), len(a)), (a, b)
            assert all(y in neighbours[x] for x, y in diff)


@pytest.mark.parametrize("action", data.typos.CHAR_ACTIONS)
def test_random_char_counts_follow_nlpaug(action):
    texts = letter_sentences(1)
    ours = run_chars(partial(data.random_char, action=action), texts)
    aug = nac.RandomCharAug(action=action)
    for text, mine in zip(texts, ours, strict=True):
        before, after = text.split(), mine.split()
        assert len(before) == len(after)
        changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
        assert len(changed) <= word_rule(aug, before)  # a substitute or swap may be a no-op
        for a, b in changed:
            assert len(a) >= 4
            c = char_rule(aug, len(a))
            if action == "insert":
                assert len(b) == len(a) + c
            elif action == "delete":
                assert len(b) == len(a) - c
            elif action == "substitute":
                assert sum(x != y for x, y in zip(a, b, strict=True)) <= c
            else:
                assert sorted(a) == sorted(b)
    if action in ("insert", "delete"):  # these always change a picked word
        n_words = [
            len([a for a, b in zip(t.split(), m.split(), strict=True) if a != b])
            for t, m in zip(texts, ours, strict=True)
        ]
        assert n_words == [word_rule(aug, t.split()) for t in texts]


def test_keyboard_char_positions_are_uniform():
    codes, lengths = map(jnp.asarray, data.encode_chars(["abcdefgh"] * B, T))
    fn = partial(KEYBOARD, aug_char_p=0.25, min_char=1)
    out = np.concatenate([batched(fn, seed)(codes, lengths)[0] for seed in range(40)])
    hits = np.sum(out != np.asarray(codes[0]), 0)[:8]
    assert hits.sum() == 40 * B * 2 and stats.chisquare(hits).pvalue > 1e-3


def test_separators_and_short_words_are_never_touched():
    texts = ["ab, cd. the quick brown; foxes!"] * B
    out = run_chars(partial(data.random_char, action="substitute", aug_char_p=1.0), texts)
    for text in out:
        assert text[:8] == "ab, cd. " and text[-1] == "!" and text[23] == ";"


# ----- errors ----------------------------------------------------------------------------

IDS = jnp.asarray([20, 21, 22, 0], jnp.int32)
KEY = jax.random.key(0)
W = partial(data.random_word, KEY, IDS, 3)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: W(action="shuffle"), ValueError, "action must be one of"),
        (lambda: W(action="delete", aug_p=1.5), ValueError, r"aug_p must be in \[0.0, 1.0\]"),
        (
            lambda: W(action="delete", aug_min=3, aug_max=2),
            ValueError,
            "aug_min must be <= aug_max",
        ),
        (lambda: W(action="delete", aug_min=-1), ValueError, "aug_min must be an int >= 0"),
        (lambda: W(action="delete", aug_max=2.5), TypeError, "aug_max must be an int"),
        (lambda: W(action="substitute"), ValueError, "pass substitutes="),
        (lambda: W(action="insert", substitutes=[]), ValueError, "substitutes must not be empty"),
        (lambda: W(action="insert", substitutes=[1.5]), TypeError, "substitutes must hold integer"),
        (
            lambda: W(action="delete", skip_ids=[[1]]),
            ValueError,
            r"skip_ids must be an array of shape \(n,\)",
        ),
        (lambda: data.random_word(KEY, IDS[None], 3, action="swap"), ValueError, "jax.vmap"),
        (
            lambda: data.random_word(KEY, IDS.astype(jnp.float32), 3, action="swap"),
            TypeError,
            "ids must be integer",
        ),
        (
            lambda: data.random_word(KEY, IDS, 9, action="swap"),
            ValueError,
            r"length must be in \[0, 4\]",
        ),
        (
            lambda: data.random_word(KEY, IDS, 2.0, action="swap"),
            TypeError,
            "length must be an integer",
        ),
        (
            lambda: data.table_substitute(KEY, IDS, 3, [1, 2]),
            ValueError,
            r"table must be .*\(vocab, k\)",
        ),
        (lambda: data.keyboard(KEY, IDS, 3, aug_word_p=-0.1), ValueError, "aug_word_p must be in"),
        (
            lambda: data.keyboard(KEY, IDS, 3, aug_char_max=0, aug_char_min=1),
            ValueError,
            "aug_char_min",
        ),
        (
            lambda: data.keyboard(KEY, IDS, 3, min_char=0),
            ValueError,
            "min_char must be an int >= 1",
        ),
        (lambda: data.random_char(KEY, IDS, 3, action="crop"), ValueError, "action must be one of"),
        (
            lambda: jax.jit(lambda p: W(action="delete", aug_p=p))(0.3),
            TypeError,
            "aug_p must be a concrete number",
        ),
    ],
)
def test_bad_arguments_fail_eagerly_naming_themselves(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_count_rule_transcribes_nlpaug():
    aug = naw.RandomWordAug()
    for n in range(0, 60):
        for p in (0.0001, 0.1, 0.3, 0.5, 0.7, 1.0):
            for lo, hi in ((1, 10), (0, 3), (2, None)):
                aug.aug_min, aug.aug_max = lo, hi
                assert edits.aug_count(n, p, lo, hi) == aug.generate_aug_cnt(n, p), (n, p, lo, hi)
    assert Counter(edits.count_table(40, 0.1, 1, 10).tolist())[4] == 10  # ceil(0.1 * 31..40)
