"""The sorting task of the minGPT demo (docs/theory.md §6), for the sequence models (LSTM, Mamba).

Each example is a random sequence s of ``length`` tokens from ``range(vocab)`` followed by sorted(s):
the full sequence has 2·length tokens. Next-token prediction: x = full[:-1], y = full[1:], and the
first length-1 targets are set to -1 (ignored), so the loss covers exactly the ``length`` sorted tokens,
the first of which is predicted once the whole unsorted half has been read.
"""
from __future__ import annotations

import operator
from typing import Any

import torch

from ..errors import UserError
from .dataset import Dataset, positive_int

#: ignore_index of the targets that are not in the loss
IGNORE = -1
#: below this many possible sequences, sample distinct ones with randperm; above, by rejection
_PERM_LIMIT = 1 << 22


def _distinct_sequences(total: int, length: int, vocab: int, g: torch.Generator) -> torch.Tensor:
    """``total`` distinct uniform sequences, (total, length) int64; requires total <= vocab**length."""
    space = vocab**length
    if space <= _PERM_LIMIT:
        codes = torch.randperm(space, generator=g)[:total]
        powers = vocab ** torch.arange(length - 1, -1, -1, dtype=torch.int64)
        return (codes[:, None] // powers) % vocab
    # large space: draw uniformly and drop repeats, keeping first occurrences in draw order
    seen: set[bytes] = set()
    rows: list[torch.Tensor] = []
    while len(rows) < total:
        batch = torch.randint(vocab, (max(2 * (total - len(rows)), 64), length), generator=g)
        for row in batch:
            key = row.numpy().tobytes()
            if key not in seen:
                seen.add(key)
                rows.append(row)
                if len(rows) == total:
                    break
    return torch.stack(rows)


def sort_examples(seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) for next-token prediction on [seqs, sorted(seqs)] with the unsorted targets masked."""
    length = seqs.shape[1]
    full = torch.cat([seqs, torch.sort(seqs, dim=1).values], dim=1)
    x = full[:, :-1].clone()
    y = full[:, 1:].clone()
    y[:, : length - 1] = IGNORE
    return x, y


def make_sort_dataset(
    *, length: int = 8, vocab: int = 4, n_train: int = 1000, n_test: int = 1000, seed: int = 0, **kw: Any
) -> Dataset:
    """The sorting task. Train and test are disjoint (and free of repeats) whenever
    n_train + n_test ≤ vocab**length; otherwise sequences are drawn i.i.d. and ``meta['disjoint']`` is False."""
    if kw:
        raise UserError(
            f"dataset 'sort' got unknown option(s) {', '.join(sorted(kw))}; accepted: length, vocab, n_train, n_test"
        )
    length = positive_int(length, "length")
    vocab = positive_int(vocab, "vocab")
    n_train = positive_int(n_train, "n_train")
    n_test = positive_int(n_test, "n_test")
    if length < 2 or vocab < 2:
        raise UserError(f"sort needs length >= 2 and vocab >= 2 (got length={length}, vocab={vocab})")
    try:
        if isinstance(seed, bool):
            raise TypeError
        seed = operator.index(seed)
    except TypeError:
        raise UserError(f"seed must be an integer, got {seed!r}") from None
    g = torch.Generator().manual_seed(seed)
    total = n_train + n_test
    disjoint = total <= vocab**length
    if disjoint:
        seqs = _distinct_sequences(total, length, vocab, g)
    else:
        seqs = torch.randint(vocab, (total, length), generator=g)
    x_train, y_train = sort_examples(seqs[:n_train])
    x_test, y_test = sort_examples(seqs[n_train:])
    return Dataset(
        name="sort",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=vocab,
        input_shape=(2 * length - 1,),
        kind="sequence",
        meta={
            "dataset": "sort",
            "source": "synthetic sorting task of the minGPT demo (docs/theory.md §6)",
            "licence": "generated",
            "length": length,
            "vocab": vocab,
            "n_train": n_train,
            "n_test": n_test,
            "seed": seed,
            "generator": f"torch.Generator (CPU), manual_seed({seed}), torch {torch.__version__}",
            "sampling": (
                "distinct sequences drawn uniformly without replacement; train and test disjoint"
                if disjoint
                else "i.i.d. uniform sequences (more requested than distinct ones exist); not disjoint"
            ),
            "disjoint": disjoint,
            "layout": f"full = [s, sorted(s)] ({2 * length} tokens); x = full[:-1]; y = full[1:] with the "
            f"first {length - 1} targets = {IGNORE}",
            "ignore_index": IGNORE,
        },
    )
