"""Text augmentation on token ids: a small sentiment classifier with and without it.

No text corpus ships offline with the installed packages (scikit-learn's 20 newsgroups and
TFDS's IMDB download on first use), so this example BUILDS one: short film reviews from
templates, whose label is the polarity of their adjectives (neutral ones like "long" or
"french" appear in both classes). The sentiment adjectives come in synonym
groups (good/fine/decent/nice, terrible/awful/horrible/dreadful, ...) with skewed
frequencies, so a small training set sees mostly the common word of each group and the
validation set holds the rare ones too. The synonym table given to
``dlopt.data.table_substitute`` is the very thesaurus the corpus was written from: the best
case for synonym replacement (a WordNet table on real reviews helps less). Random word
swaps and deletions (EDA's, nlpaug's ``RandomWordAug``) cannot teach an unseen word.

The model is a mean of 16-d word embeddings and a linear layer, trained with ``dlopt.adam``
for 400 steps of 32 sentences drawn from the training set; each sentence in a batch is
augmented with probability 1/2, on the fly inside the jitted step (a key per sentence,
``jax.vmap``). Three seeds per training-set size, each its own training set (the first n of
256 sentences); the validation set has 2,000 sentences.

Run: ``python examples/text_augmentation.py`` (about a minute on two cores); prints a few
augmented sentences and the accuracy table, writes ``examples/figures/text_augmentation.png``.
"""

import os
import random
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import dlopt
from dlopt import data

OUT = os.path.join(os.path.dirname(__file__), "figures")
T, BATCH, STEPS, DIM, SEEDS = 16, 32, 400, 16, 3
SIZES = (8, 16, 32, 64, 128)
WEIGHTS = (0.8, 0.1, 0.06, 0.04)  # frequency of each synonym in its group

POSITIVE = (
    ("good", "fine", "decent", "nice"),
    ("great", "excellent", "superb", "outstanding"),
    ("wonderful", "lovely", "delightful", "charming"),
    ("fun", "enjoyable", "entertaining", "engaging"),
    ("clever", "smart", "witty", "brilliant"),
)
NEGATIVE = (
    ("bad", "poor", "weak", "mediocre"),
    ("terrible", "awful", "horrible", "dreadful"),
    ("boring", "dull", "tedious", "bland"),
    ("silly", "stupid", "dumb", "pointless"),
    ("messy", "sloppy", "clumsy", "ugly"),
)
NOUNS = ("film", "movie", "plot", "story", "cast", "script", "ending", "acting", "scene")
ADVERBS = ("really", "quite", "very", "rather", "so", "truly", "pretty", "")
NEUTRAL = ("long", "short", "new", "old", "french", "recent", "quiet", "loud", "slow", "")
TEMPLATES = (
    "the {x} {n} was {a} {j}",
    "a {a} {j} {x} {n}",
    "i found the {x} {n} {a} {j} and the {m} {b} {k}",
    "what a {j} {n} , and {x}",
    "{j} {x} {n} , {b} {k} {m}",
    "the {n} is {x} and {j} but the {m} is {k}",
)
MODES = ("none", "random words (swap + delete)", "synonyms (table_substitute)")


def review(rng: random.Random, label: int) -> str:
    groups = POSITIVE if label else NEGATIVE
    adjective = lambda: rng.choices(rng.choice(groups), WEIGHTS)[0]  # noqa: E731
    return " ".join(
        rng.choice(TEMPLATES)
        .format(
            n=rng.choice(NOUNS),
            m=rng.choice(NOUNS),
            a=rng.choice(ADVERBS),
            b=rng.choice(ADVERBS),
            x=rng.choice(NEUTRAL),
            j=adjective(),
            k=adjective(),
        )
        .split()
    )


def corpus(seed: int, count: int) -> tuple[list[str], np.ndarray]:
    rng = random.Random(seed)
    labels = [rng.randint(0, 1) for _ in range(count)]
    return [review(rng, y) for y in labels], np.asarray(labels, np.int32)


def thesaurus() -> dict[str, list[str]]:
    return {w: [s for s in group if s != w] for group in POSITIVE + NEGATIVE for w in group}


def make_augment(mode: str, table: jax.Array):
    """``(key, ids, lengths) -> (ids, lengths)`` for a batch; half the sentences augmented."""
    swap = jax.vmap(partial(data.random_word, action="swap", aug_p=0.2))
    delete = jax.vmap(partial(data.random_word, action="delete", aug_p=0.1))
    synonyms = jax.vmap(partial(data.table_substitute, table=table, aug_p=0.3))

    def augment(key, ids, lengths):
        if mode == MODES[0]:
            return ids, lengths
        k_mix, k1, k2 = jax.random.split(key, 3)
        keys = lambda k: jax.random.split(k, ids.shape[0])  # noqa: E731
        if mode == MODES[1]:
            new, new_len = delete(keys(k2), *swap(keys(k1), ids, lengths))
        else:
            new, new_len = synonyms(keys(k1), ids, lengths)
        mix = jax.random.bernoulli(k_mix, 0.5, lengths.shape)
        return jnp.where(mix[:, None], new, ids), jnp.where(mix, new_len, lengths)

    return augment


def logits_fn(params, ids, lengths):
    mask = (jnp.arange(T)[None, :] < lengths[:, None]).astype(jnp.float32)
    pooled = jnp.sum(params["emb"][ids] * mask[..., None], 1) / lengths[:, None]
    return pooled @ params["w"] + params["b"]


def make_train(augment, vocab_size: int):
    tx = dlopt.adam(1e-2)

    def loss_fn(params, ids, lengths, labels):
        logp = jax.nn.log_softmax(logits_fn(params, ids, lengths))
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1))

    def train(key, ids, lengths, labels, n):
        k_init, k_run = jax.random.split(key)
        params = {
            "emb": 0.1 * jax.random.normal(k_init, (vocab_size, DIM)),
            "w": jnp.zeros((DIM, 2)),
            "b": jnp.zeros(2),
        }

        def step(carry, k):
            params, state = carry
            k_idx, k_aug = jax.random.split(k)
            idx = jax.random.randint(k_idx, (BATCH,), 0, n)
            x, x_len = augment(k_aug, ids[idx], lengths[idx])
            grads = jax.grad(loss_fn)(params, x, x_len, labels[idx])
            updates, state = tx.update(grads, state, params)
            return (dlopt.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(
            step, (params, tx.init(params)), jax.random.split(k_run, STEPS)
        )
        return params

    # one compiled program per mode: each seed's training set holds 256 sentences, n is traced
    return jax.jit(jax.vmap(train, in_axes=(0, 0, 0, 0, None)))


def show(vocab, table, ids, lengths):
    """A few augmented sentences, decoded back to text (word ops, then keyboard typos)."""
    fillers = vocab.lookup(ADVERBS[:-1])
    ops = {
        "swap": partial(data.random_word, action="swap", aug_p=0.3),
        "delete": partial(data.random_word, action="delete", aug_p=0.3),
        "insert": partial(data.random_word, action="insert", aug_p=0.2, substitutes=fillers),
        "synonyms": partial(data.table_substitute, table=table, aug_p=0.5),
    }
    keys = jax.random.split(jax.random.key(7), 3)
    texts = vocab.decode(ids[:3], lengths[:3])
    chars, char_len = data.encode_chars(texts, 96)

    @jax.jit  # one program for all of them
    def augment_all(ids, lengths, chars, char_len):
        out = {name: jax.vmap(fn)(keys, ids, lengths) for name, fn in ops.items()}
        return out, jax.vmap(data.keyboard)(keys, chars, char_len)

    words, typos = augment_all(ids[:3], lengths[:3], chars, char_len)
    print("original:", texts)
    for name, (out, out_len) in words.items():
        print(f"{name}:", vocab.decode(np.asarray(out), np.asarray(out_len)))
    print("keyboard typos:", data.decode_chars(*map(np.asarray, typos)))


def plot(sizes, results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, accs in results.items():
        accs = np.asarray(accs)
        ax.errorbar(sizes, accs.mean(1), yerr=accs.std(1), marker="o", capsize=3, label=mode)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("training sentences")
    ax.set_ylabel("validation accuracy (mean ± std)")
    ax.set_title("Text augmentation on synthetic reviews (3 seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    train = [corpus(seed, 256) for seed in range(SEEDS)]
    val_texts, val_y = corpus(SEEDS, 2000)
    synonyms = thesaurus()
    vocab = data.Vocab.fit([t for texts, _ in train for t in texts], extra=synonyms)
    table = jnp.asarray(data.candidate_table(synonyms, vocab))
    encoded = [vocab.encode(texts, T) for texts, _ in train]
    ids, lengths = (jnp.asarray(np.stack(a)) for a in zip(*encoded, strict=True))
    train_y = jnp.asarray(np.stack([y for _, y in train]))
    val_ids, val_len = vocab.encode(val_texts, T)
    show(vocab, table, ids[0], lengths[0])

    keys = jax.random.split(jax.random.key(0), SEEDS)
    results = {}
    for mode in MODES:
        fit = make_train(make_augment(mode, table), len(vocab))
        results[mode] = []
        for n in SIZES:
            params = fit(keys, ids, lengths, train_y, n)
            logits = jax.vmap(logits_fn, in_axes=(0, None, None))(params, val_ids, val_len)
            results[mode].append(np.asarray(jnp.mean(jnp.argmax(logits, -1) == val_y, -1)))

    print("\n| training sentences | " + " | ".join(MODES) + " |")
    print("|---" * (len(MODES) + 1) + "|")
    for i, n in enumerate(SIZES):
        cells = [f"{results[m][i].mean():.3f} ± {results[m][i].std():.3f}" for m in MODES]
        print(f"| {n} | " + " | ".join(cells) + " |")
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "text_augmentation.png")
    plot(SIZES, results, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
