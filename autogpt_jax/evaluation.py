"""What the stages measure: accuracy, macro-F1, confusion, log-loss; mean ± std over seeds;
serving throughput."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from autogpt_jax.inference import Classifier


def accuracy_f1(pred: np.ndarray, gold: np.ndarray, n_classes: int) -> dict[str, Any]:
    pred, gold = np.asarray(pred), np.asarray(gold)
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (gold, pred), 1)
    f1s = []
    for c in range(n_classes):
        tp = cm[c, c]
        p = tp / max(cm[:, c].sum(), 1)
        r = tp / max(cm[c, :].sum(), 1)
        f1s.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
    return {"accuracy": float((pred == gold).mean()) if gold.size else 0.0, "macro_f1": float(np.mean(f1s)),
            "f1": [float(f) for f in f1s], "confusion": cm.tolist()}


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, in float64 (stable: the row maximum is subtracted)."""
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def log_loss(logits_NxC: np.ndarray, gold_N: np.ndarray) -> float:
    """Mean negative log-likelihood of ``gold_N`` under the softmax of ``logits_NxC`` (0 for no
    rows); float64, so that ties between runs compare the same on every backend."""
    y = np.asarray(gold_N)
    return float(-log_softmax(logits_NxC)[np.arange(len(y)), y].mean()) if len(y) else 0.0


def evaluate(clf: Classifier, ds, batch_size: int, logits: np.ndarray | None = None,
             progress: str | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1, confusion and log-loss of ``clf`` on a labelled split (``logits``:
    the classifier's own on ``ds``, when already computed; ``progress``: a progress bar's label)."""
    gold = np.asarray(ds["label"])
    logits = clf.logits(list(ds["text"]), batch_size, progress=progress) if logits is None else logits
    res = accuracy_f1(logits.argmax(-1), gold, len(clf.labels))
    res["f1"] = dict(zip(clf.labels, res["f1"]))  # per class, by name
    return {**res, "log_loss": log_loss(logits, gold)}


def mean_std(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)}


def sentences_per_s(clf: Classifier, texts: list[str], batch_size: int) -> float:
    """Throughput after compilation: every length bucket is compiled by a first pass."""
    clf.logits(texts, batch_size)
    clf.forget()  # time the model, not the memo of the first pass
    t0 = time.perf_counter()
    clf.logits(texts, batch_size)
    return len(texts) / (time.perf_counter() - t0)
