"""K-shot splits in the LM-BFF protocol: K examples per class for train and K more for dev, drawn
from the pool with one of the seeds 13, 21, 42, 87, 100; written into the run directory so the
run can be reproduced."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from autogpt_jax.errors import DataError

LMBFF_SEEDS = (13, 21, 42, 87, 100)


def kshot_indices(labels: np.ndarray, k: int, seed: int, *, names: list[str] | None = None,
                  dev: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Indices of K train and (if ``dev``) K dev examples per class, disjoint and deterministic.
    The pool order does not matter beyond the labels: each class's candidates are taken in index
    order and permuted with a generator seeded by (seed, class)."""
    labels = np.asarray(labels)
    if k < 1:
        raise DataError(f"k_shot must be >= 1, got {k}")
    need = 2 * k if dev else k
    train, devi = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if idx.size < need:
            name = names[c] if names is not None and 0 <= c < len(names) else c
            raise DataError(f"k_shot={k} needs {need} examples of class {name!r} "
                            f"({k} train{f' + {k} dev' if dev else ''}), but the pool has only {idx.size}; "
                            f"lower --data.k_shot to at most {idx.size // (2 if dev else 1)}")
        pick = idx[np.random.default_rng([seed, int(c)]).permutation(idx.size)[:need]]
        train.append(pick[:k])
        devi.append(pick[k:])
    order = np.random.default_rng([seed, 999])
    tr = np.concatenate(train)
    dv = np.concatenate(devi) if dev else np.zeros(0, np.int64)
    return tr[order.permutation(tr.size)], dv[order.permutation(dv.size)] if dv.size else dv


def full_indices(labels: np.ndarray, seed: int, *, dev_fraction: float = 0.1, names: list[str] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Full-data split (``k_shot`` 0): a stratified ``dev_fraction`` of each class (at least one
    example) for dev, the rest for train; deterministic for a seed."""
    labels = np.asarray(labels)
    train, devi = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if idx.size < 2:
            name = names[c] if names is not None and 0 <= c < len(names) else c
            raise DataError(f"class {name!r} has {idx.size} labelled example; a class needs 2 (one to train on, "
                            "one to choose the recipe with): add examples of it, or pass --data.dev_file")
        perm = idx[np.random.default_rng([seed, int(c)]).permutation(idx.size)]
        n_dev = max(1, int(round(dev_fraction * idx.size)))
        devi.append(perm[:n_dev])
        train.append(perm[n_dev:])
    order = np.random.default_rng([seed, 999])
    tr, dv = np.concatenate(train), np.concatenate(devi)
    return tr[order.permutation(tr.size)], dv[order.permutation(dv.size)]


def fixed_subset(ds, n: int | None):
    """At most ``n`` rows of ``ds`` (a ``datasets.Dataset``): a fixed random subset in the original
    order, the same on every call (``data.max_test``); all of it when ``n`` is None or large enough."""
    if n is None or len(ds) <= n:
        return ds
    return ds.select(np.sort(np.random.default_rng(0).permutation(len(ds))[:n]).tolist())


def fewshot_split(pool, k: int, seed: int, *, dev: bool = True, dev_fraction: float = 0.1):
    """(train, dev) ``datasets.Dataset`` K-shot subsets of ``pool`` (a Dataset with a ClassLabel
    ``label``). ``k`` 0: all of the pool (a stratified ``dev_fraction`` for dev when ``dev``)."""
    if len(pool) == 0:
        raise DataError("the labelled pool is empty")
    names = pool.features["label"].names if hasattr(pool.features["label"], "names") else None
    if k == 0:
        if not dev:
            return pool, None
        tr, dv = full_indices(np.asarray(pool["label"]), seed, dev_fraction=dev_fraction, names=names)
        return pool.select(tr.tolist()), pool.select(dv.tolist())
    tr, dv = kshot_indices(np.asarray(pool["label"]), k, seed, names=names, dev=dev)
    return pool.select(tr.tolist()), pool.select(dv.tolist()) if dev else None


def write_split(directory: str | Path, name: str, ds) -> Path:
    """Write a split as JSON Lines (text, label name) — the exact data a run trained on."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    names = ds.features["label"].names
    path = d / f"{name}.jsonl"
    with open(path, "w") as f:
        for row in ds:
            f.write(json.dumps({"text": row["text"], "label": names[row["label"]]}) + "\n")
    return path
