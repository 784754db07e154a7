"""Out-of-scope handling: calibrated confidence and the threshold below which a question goes to a
human agent.

Calibration is temperature scaling (Guo et al., 2017): one scalar T, fitted on dev by negative
log-likelihood, divides the logits, so the top class's probability means what it says. The
threshold on that probability is chosen on dev too: with out-of-scope dev queries (CLINC150's
``oos_validation``), the one that maximises the mean of in-scope accuracy (a question handed over
counts as wrong) and out-of-scope recall; without them, the one that keeps ``in_scope_recall`` of
the correctly answered dev questions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 161))


def softmax(logits_NxC: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits_NxC, np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def nll(logits_NxC: np.ndarray, gold_N: np.ndarray, temperature: float) -> float:
    p = softmax(logits_NxC, temperature)
    return float(-np.log(np.maximum(p[np.arange(len(gold_N)), gold_N], 1e-300)).mean())


def fit_temperature(logits_NxC: np.ndarray, gold_N: np.ndarray) -> float:
    """The temperature (on a log grid from 0.05 to 20) with the lowest dev negative log-likelihood."""
    if len(gold_N) == 0:
        return 1.0
    return float(min(TEMPERATURES, key=lambda t: nll(logits_NxC, gold_N, t)))


def ece(probs_NxC: np.ndarray, gold_N: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-class probability (equal-width bins)."""
    conf, pred = probs_NxC.max(-1), probs_NxC.argmax(-1)
    correct = (pred == gold_N).astype(np.float64)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    return float(sum(abs(correct[which == b].mean() - conf[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def choose_threshold(conf_in: np.ndarray, correct_in: np.ndarray, conf_oos: np.ndarray | None,
                     in_scope_recall: float = 0.95) -> float:
    """The hand-over threshold on calibrated confidence (see the module docstring)."""
    conf_in, correct_in = np.asarray(conf_in, np.float64), np.asarray(correct_in, bool)
    if conf_oos is not None and len(conf_oos):
        cands = np.unique(np.concatenate([[0.0], conf_in, np.asarray(conf_oos, np.float64)]))
        in_acc = (correct_in[None, :] & (conf_in[None, :] >= cands[:, None])).mean(1)
        oos_rec = (np.asarray(conf_oos)[None, :] < cands[:, None]).mean(1)
        score = in_acc + oos_rec
        return float(cands[int(np.flatnonzero(score >= score.max() - 1e-12)[0])])  # ties: the lower threshold
    ok = conf_in[correct_in]
    return float(np.quantile(ok, 1.0 - in_scope_recall)) if ok.size else 0.0


@dataclasses.dataclass(frozen=True)
class Handover:
    """A fitted temperature and threshold: ``decide`` gives calibrated probabilities and hand-overs."""

    temperature: float = 1.0
    threshold: float = 0.0

    def probabilities(self, logits_NxC: np.ndarray) -> np.ndarray:
        return softmax(logits_NxC, self.temperature)

    def decide(self, logits_NxC: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated probabilities N × C, hand over N) for a batch of logits."""
        p = self.probabilities(logits_NxC)
        return p, p.max(-1) < self.threshold

    def to_json(self) -> dict[str, float]:
        return {"temperature": self.temperature, "threshold": self.threshold}


def calibrate(dev_logits: np.ndarray, dev_gold: np.ndarray, oos_dev_logits: np.ndarray | None, *,
              in_scope_recall: float = 0.95, threshold: float | None = None) -> Handover:
    """Fit the temperature on in-scope dev, then the threshold (unless given)."""
    t = fit_temperature(dev_logits, dev_gold)
    if threshold is None:
        p = softmax(dev_logits, t)
        conf_oos = softmax(oos_dev_logits, t).max(-1) if oos_dev_logits is not None else None
        threshold = choose_threshold(p.max(-1), p.argmax(-1) == dev_gold, conf_oos, in_scope_recall)
    return Handover(t, float(threshold))


def measure(h: Handover, logits: np.ndarray, gold: np.ndarray, oos_logits: np.ndarray | None) -> dict[str, Any]:
    """In-scope accuracy with hand-over (a handed-over question counts as wrong), the share
    answered, accuracy among the answered, out-of-scope recall, and calibration error before/after."""
    p, hand = h.decide(logits)
    correct = p.argmax(-1) == gold
    out = {"in_scope_accuracy": float((correct & ~hand).mean()) if len(gold) else 0.0,
           "in_scope_answered": float((~hand).mean()) if len(gold) else 0.0,
           "accuracy_when_answered": float(correct[~hand].mean()) if (~hand).any() else 0.0,
           "ece_uncalibrated": ece(softmax(logits), gold) if len(gold) else 0.0,
           "ece_calibrated": ece(p, gold) if len(gold) else 0.0}
    if oos_logits is not None and len(oos_logits):
        out["out_of_scope_recall"] = float(h.decide(oos_logits)[1].mean())
        out["out_of_scope_queries"] = int(len(oos_logits))
    return out
