"""Calibration of prompt scores: a class bias added to a classifier's logits (``Classifier.logit_bias``).

- content-free (Zhao et al. 2021, "Calibrate before use"): a prompt filled with an input that
  says nothing ("N/A", "", the mask token) should score every class alike; the mean class
  probabilities p_cf it gets instead measure the prompt's own bias, and log p − log p_cf removes it.
- prior: a class bias fitted on dev by log-loss (with a small L2 penalty: 32 dev examples).
- pool: the class bias under which the classifier's mean predicted distribution over unlabelled
  task texts equals the labelled examples' class share (a K-shot split is class-balanced, so:
  balanced classes). A fine-tuned prompt that leans to one class on the pool (65% positive on MR's
  balanced pool) is moved back; thousands of texts, where dev has 2K. Only for tasks whose classes
  are as frequent as in the labelled examples.
Each is one bias vector, so serving only adds it.
"""

from __future__ import annotations

import numpy as np

from autogpt_jax.evaluation import log_loss, log_softmax

CONTENT_FREE = ("N/A", "")
PRIOR_L2 = 0.01  # the fitted bias's penalty: mean log-loss + PRIOR_L2 · |b|²
PRIOR_STEPS = 500


def content_free_texts(tokenizer) -> list[str]:
    """The content-free inputs: "N/A", the empty text and, when the tokenizer has one, the mask token."""
    mask = getattr(tokenizer, "mask_token", None)
    return [*CONTENT_FREE, *([mask] if mask else [])]


def content_free_bias(logits_NxC: np.ndarray) -> np.ndarray:
    """−log of the mean class probabilities over content-free inputs' logits (centred)."""
    p_C = np.exp(log_softmax(logits_NxC)).mean(0)
    b = -np.log(np.maximum(p_C, 1e-12))
    return (b - b.mean()).astype(np.float32)


def fit_prior_bias(logits_NxC: np.ndarray, labels_N: np.ndarray, l2: float = PRIOR_L2,
                   steps: int = PRIOR_STEPS) -> np.ndarray:
    """The class bias b minimising mean log-loss(logits + b) + l2·|b|² on labelled (dev) logits
    (convex: Newton steps with a backtracking line search on the C-dimensional problem), centred."""
    x, y = np.asarray(logits_NxC, np.float64), np.asarray(labels_N)
    N, C = x.shape

    def objective(b):
        return log_loss(x + b, y) + l2 * b @ b

    onehot = np.eye(C)[y]
    b = np.zeros(C)
    f = objective(b)
    for _ in range(steps):
        p = np.exp(log_softmax(x + b))
        g = (p - onehot).mean(0) + 2 * l2 * b
        H = np.diag(p.mean(0)) - p.T @ p / N + 2 * l2 * np.eye(C)
        step, t = np.linalg.solve(H, g), 1.0
        while t > 1e-6 and objective(b - t * step) > f - 1e-4 * t * (g @ step):
            t /= 2
        b, f_new = b - t * step, objective(b - t * step)
        if f - f_new < 1e-10:
            break
        f = f_new
    return (b - b.mean()).astype(np.float32)


def prior_matching_bias(logits_NxC: np.ndarray, prior_C: np.ndarray, steps: int = 200, tol: float = 1e-6
                        ) -> np.ndarray:
    """The class bias b with mean softmax(logits + b) = ``prior_C`` (fixed-point iteration
    b += log prior − log mean p, the one-marginal Sinkhorn step), centred."""
    x = np.asarray(logits_NxC, np.float64)
    target = np.log(np.asarray(prior_C, np.float64) / np.sum(prior_C))
    b = np.zeros(x.shape[1])
    for _ in range(steps):
        gap = target - np.log(np.maximum(np.exp(log_softmax(x + b)).mean(0), 1e-300))
        b += gap
        if np.abs(gap).max() < tol:
            break
    return (b - b.mean()).astype(np.float32)


METHODS = ("content_free", "prior", "both", "pool")


def fit_bias(method: str, dev_logits: np.ndarray | None = None, dev_labels: np.ndarray | None = None,
             content_free_logits: np.ndarray | None = None, pool_logits: np.ndarray | None = None,
             prior: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The class bias of ``method`` from already-scored logits (content_free | prior | both: the prior
    fitted after the content-free correction | pool: ``pool_logits``' mean prediction moved to
    ``prior``, the labelled class share); returns the bias and what was fitted, for the report.
    Each method needs only its own logits."""
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: one of {', '.join(METHODS)}")
    if method == "pool":
        if pool_logits is None or len(pool_logits) == 0:
            raise ValueError("pool calibration needs unlabelled task texts")
        b = prior_matching_bias(pool_logits, prior)
        return b, {"method": method, "pool": len(pool_logits),
                   "prior": np.asarray(prior, np.float64).tolist(), "bias": b.tolist()}
    rep: dict = {"method": method}
    bias = 0.0
    if method in ("content_free", "both"):
        cf = content_free_bias(content_free_logits)
        bias = bias + cf
        rep["content_free_bias"] = cf.tolist()
    if method in ("prior", "both"):
        p = fit_prior_bias(np.asarray(dev_logits) + bias, dev_labels)
        bias = bias + p
        rep["prior_bias"] = p.tolist()
    bias = np.asarray(bias, np.float32)
    rep["bias"] = bias.tolist()
    return bias, rep


def dev_scores(logits_NxC: np.ndarray, labels_N: np.ndarray) -> dict:
    """Accuracy and mean log-loss of ``logits_NxC`` on ``labels_N``."""
    y = np.asarray(labels_N)
    return {"accuracy": float((np.asarray(logits_NxC).argmax(-1) == y).mean()), "log_loss": log_loss(logits_NxC, y)}


def keeps_calibration(uncalibrated: dict, calibrated: dict) -> bool:
    """The dev check: the calibrated scores are kept unless they lower dev accuracy, or tie on it
    with a higher dev log-loss."""
    return ((calibrated["accuracy"], -calibrated["log_loss"]) >= (uncalibrated["accuracy"], -uncalibrated["log_loss"]))


def calibrate(clf, method: str, dev_texts: list[str], dev_labels: np.ndarray, batch_size: int = 64,
              pool_texts: list[str] | None = None, prior: np.ndarray | None = None,
              progress: str | None = None, check_dev: bool = False) -> dict:
    """Set ``clf.logit_bias`` by ``method`` (see ``fit_bias``), scoring only the texts the method
    needs; returns what was fitted, for the report. ``check_dev``: score dev with and without the
    bias and keep it only where ``keeps_calibration`` says so (``dev_check`` in the report)."""
    clf.logit_bias = None
    if method == "pool" and not pool_texts:
        raise ValueError("pool calibration needs unlabelled task texts")
    logits: dict = {}
    if method == "pool":
        logits["pool_logits"] = clf.logits(pool_texts, batch_size, progress=progress)
    texts = content_free_texts(clf.tokenizer)
    if method in ("content_free", "both"):
        logits["content_free_logits"] = clf.logits(texts, batch_size)
    dev_logits = clf.logits(dev_texts, batch_size) if method in ("prior", "both") or check_dev else None
    if method in ("prior", "both"):
        logits.update(dev_logits=dev_logits, dev_labels=dev_labels)
    bias, rep = fit_bias(method, prior=prior, **logits)
    if "content_free_logits" in logits:
        rep["content_free_inputs"] = texts
    if check_dev:
        before, after = dev_scores(dev_logits, dev_labels), dev_scores(dev_logits + bias, dev_labels)
        kept = keeps_calibration(before, after)
        rep["dev_check"] = {"uncalibrated": before, "calibrated": after, "kept": kept}
        if not kept:
            rep["bias"] = [0.0] * len(bias)
            bias = None
    clf.logit_bias = bias
    return rep
