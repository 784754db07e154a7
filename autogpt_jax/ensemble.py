"""Prompt ensembles (PET): several fine-tuned prompt classifiers combined by their class
log-probabilities, averaged with weights (each member's dev accuracy, or uniform).

An ``Ensemble`` reads like a ``Classifier`` (``labels``, ``logits``, ``probabilities``,
``handover``), so evaluation, hand-over, pool labelling, export and ``predict`` take either.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from autogpt_jax.evaluation import log_softmax
from autogpt_jax.inference import Classifier


def member_weights(dev_accuracies: list[float], weighting: str) -> np.ndarray:
    """Normalised weights: proportional to dev accuracy (``dev``) or equal (``uniform``)."""
    a = np.asarray(dev_accuracies, np.float64)
    w = np.ones_like(a) if weighting == "uniform" else np.maximum(a, 1e-6)
    return (w / w.sum()).astype(np.float64)


def combine(member_logits: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Σ_m w_m · log_softmax(logits_m): the ensemble's class scores (N × C), log-probabilities when
    the weights sum to 1."""
    out = sum(w * log_softmax(lg) for w, lg in zip(np.asarray(weights, np.float64), member_logits))
    return np.asarray(out, np.float32)


@dataclasses.dataclass
class Ensemble:
    members: list[Classifier]
    weights: np.ndarray
    weighting: str = "dev"
    # what each member is, for the report and the export: template, label words, seed, dev accuracy
    info: list[dict] = dataclasses.field(default_factory=list)
    handover: Any = None

    def __post_init__(self):
        if not self.members or len(self.members) != len(self.weights):
            raise ValueError("an ensemble needs one weight per member")
        self.weights = np.asarray(self.weights, np.float64) / float(np.sum(self.weights))

    # the first (best) member stands for the ensemble where one model is asked for
    labels = property(lambda self: self.members[0].labels)
    model = property(lambda self: self.members[0].model)
    mode = property(lambda self: self.members[0].mode)
    tokenizer = property(lambda self: self.members[0].tokenizer)
    template = property(lambda self: self.members[0].template)
    label_words = property(lambda self: self.members[0].label_words)
    max_length = property(lambda self: max(m.max_length for m in self.members))

    def forget(self) -> None:
        for m in self.members:
            m.forget()

    def member_logits(self, texts: list[str], batch_size: int = 64, progress: str | None = None) -> list[np.ndarray]:
        n = len(self.members)
        return [m.logits(texts, batch_size, progress=None if progress is None else f"{progress} [member {i + 1}/{n}]")
                for i, m in enumerate(self.members)]

    def logits(self, texts: list[str], batch_size: int = 64, progress: str | None = None) -> np.ndarray:
        return combine(self.member_logits(texts, batch_size, progress), self.weights)

    def probabilities(self, texts: list[str], batch_size: int = 64, progress: str | None = None) -> np.ndarray:
        return np.exp(log_softmax(self.logits(texts, batch_size, progress))).astype(np.float32)
