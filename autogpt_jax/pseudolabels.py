"""Labelling the unlabelled pool with a teacher, and choosing what a student learns from it.

``label_pool``: the teacher's logits over the pool, batched and compiled once per shape (the
classifier's own batching; on a mesh every device labels its share), with a progress bar, and
cached on disk per (teacher, pool): a rerun with the same teacher weights and prompt reads them
back. ``select_confident``: a class-balanced top-K above a confidence threshold. ``soft_targets``:
the teacher's distribution at a temperature. ``word_dropout``: the student's input noise.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from flax import nnx

from autogpt_jax.evaluation import log_softmax
from autogpt_jax.ensemble import Ensemble
from autogpt_jax.errors import DataError
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.loop import is_main

log = logging.getLogger(__name__)


def _update_params(h, model) -> None:
    for path, leaf in sorted(nnx.to_flat_state(nnx.state(model, nnx.Param)), key=lambda kv: str(kv[0])):
        a = shd.to_host(leaf.get_value() if hasattr(leaf, "get_value") else leaf)
        h.update(str(path).encode())
        h.update(np.ascontiguousarray(a).tobytes())


def fingerprint(clf) -> str:
    """A hash of what decides a classifier's logits: its weights, mode, prompt, label words and bias
    (an ensemble: its members and weights)."""
    h = hashlib.sha256()
    if isinstance(clf, Ensemble):
        for m in clf.members:
            h.update(fingerprint(m).encode())
        h.update(np.asarray(clf.weights, np.float64).tobytes())
        return h.hexdigest()[:24]
    t = clf.template
    h.update(repr((clf.mode, t.source if t else None, t.demos if t else None, clf.label_words, clf.pooling,
                   clf.max_length, float(clf.scale), clf.labels)).encode())
    if clf.logit_bias is not None:
        h.update(np.asarray(clf.logit_bias, np.float32).tobytes())
    _update_params(h, clf.model)
    return h.hexdigest()[:24]


def texts_hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:24]


def label_pool(clf, texts: list[str], cache_dir: Path | None, batch_size: int = 64,
               progress: str | None = None) -> tuple[np.ndarray, bool]:
    """The teacher's class logits over ``texts`` (N × C) and whether they came from the cache."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"logits-{fingerprint(clf)}-{texts_hash(texts)}.npy"
        if path.is_file():
            out = np.load(path)
            if out.shape == (len(texts), len(clf.labels)):
                log.info("pool labels from the cache: %s", path)
                return out, True
    out = np.asarray(clf.logits(texts, batch_size, progress=progress), np.float32)
    if path is not None and is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, out)
        tmp.replace(path)
    return out, False


def select_confident(probs_NxC: np.ndarray, per_class: int, threshold: float, min_per_class: int = 0) -> np.ndarray:
    """Indices of the pseudo-labelled texts: for every class, its most confident predictions with
    confidence >= ``threshold``, the same number for each class (at most ``per_class``: fewer when
    a class has fewer above the threshold), in descending confidence, classes interleaved.

    ``min_per_class``: when the weakest class has fewer than this many texts above the threshold
    (a teacher whose confidences sit low: an ensemble averaging members that disagree), every class
    keeps its ``min(min_per_class, per_class)`` most confident predictions whatever their
    confidence, and a warning says so (PET's rule: rank per class, no threshold). 0: an error
    instead when a class has none above the threshold."""
    probs = np.asarray(probs_NxC)
    pred, conf = probs.argmax(-1), probs.max(-1)
    C = probs.shape[1]

    def ranked_above(t: float) -> list[np.ndarray]:
        out = []
        for c in range(C):
            idx = np.flatnonzero((pred == c) & (conf >= t))
            out.append(idx[np.argsort(-conf[idx], kind="stable")])
        return out

    ranked = ranked_above(threshold)
    n = min(per_class, *(len(r) for r in ranked))
    floor = min(min_per_class, per_class)
    if n < floor:
        counts = [len(r) for r in ranked]
        ranked = ranked_above(-np.inf)
        n = min(floor, *(len(r) for r in ranked))
        if n == 0:
            short = [c for c in range(C) if len(ranked[c]) == 0]
            raise DataError(f"self-training: the teacher predicts no pool text as class(es) {short} (of "
                            f"{len(probs)} texts); give more unlabelled text (--data.unlabeled_file)")
        log.warning("self-training: %s texts per class reach the confidence threshold %s (fewer than "
                    "selftrain.min_per_class %d): keeping each class's %d most confident predictions instead "
                    "(the least confident kept: %.3f)", counts, threshold, min_per_class, n,
                    min(conf[r[:n]].min() for r in ranked))
    elif n == 0:
        short = [c for c in range(C) if len(ranked[c]) == 0]
        raise DataError(f"self-training: no pool text of class(es) {short} reaches the confidence threshold "
                        f"{threshold} (the most confident of the {len(probs)} texts: {conf.max():.3f}); lower "
                        "--selftrain.threshold, set --selftrain.min_per_class, or give more unlabelled text "
                        "(--data.unlabeled_file)")
    return np.stack([r[:n] for r in ranked], 1).reshape(-1)


def soft_targets(logits_NxC: np.ndarray, temperature: float) -> np.ndarray:
    """The teacher's distribution softened at ``temperature`` (0: one-hot of its prediction)."""
    lg = np.asarray(logits_NxC, np.float64)
    if temperature == 0:
        return np.eye(lg.shape[1], dtype=np.float32)[lg.argmax(-1)]
    return np.exp(log_softmax(lg / temperature)).astype(np.float32)


def word_dropout(texts: list[str], rate: float, seed: int) -> list[str]:
    """Each word dropped with probability ``rate`` (at least one word kept): a noised view."""
    if rate <= 0:
        return list(texts)
    rng = np.random.default_rng([seed, 11])
    out = []
    for t in texts:
        words = t.split()
        keep = rng.random(len(words)) >= rate
        if words and not keep.any():
            keep[rng.integers(len(words))] = True
        out.append(" ".join(w for w, k in zip(words, keep) if k))
    return out


def pool_subset(pool: tuple[str, ...], cap: int | None, seed: int) -> list[str]:
    """The pool, or a seeded sample of ``cap`` of it (in pool order)."""
    if cap is None or len(pool) <= cap:
        return list(pool)
    keep = np.sort(np.random.default_rng([seed, 5]).permutation(len(pool))[:cap])
    return [pool[i] for i in keep]
