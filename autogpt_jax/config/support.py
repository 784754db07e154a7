"""The config sections of the customer-service assistant: hand-over (out-of-scope handling) and
retrieval (the answer index)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from autogpt_jax.config.sections import OptimConfig, check


@dataclasses.dataclass(frozen=True)
class HandoverConfig:
    """Out-of-scope handling (see autogpt_jax.handover): the evaluate stage fits a temperature and a
    confidence threshold on dev; below the threshold ``predict`` says to hand over to a human."""

    enabled: bool = False
    # Out-of-scope queries for calibration (validation split) and measurement (test split): a
    # registered source (clinc150). Null: the threshold keeps in_scope_recall of the correctly
    # answered dev questions.
    out_of_scope: Optional[str] = None
    in_scope_recall: float = 0.95
    # A fixed threshold on calibrated confidence instead of the chosen one.
    threshold: Optional[float] = None

    def __post_init__(self):
        check(0.0 < self.in_scope_recall <= 1.0, f"handover.in_scope_recall must be in (0, 1], got {self.in_scope_recall}")
        check(self.threshold is None or 0.0 <= self.threshold <= 1.0,
               f"handover.threshold must be in [0, 1] or null, got {self.threshold}")


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """Stage ``retrieval`` (customer-service answers, see autogpt_jax.retrieval): a bi-encoder
    fine-tuned contrastively on question -> answer pairs, and the answer index; exported to
    ``export/retriever/``."""

    # A registered dataset with question/answer/intent columns and a held-out test split.
    dataset: Optional[str] = "bitext_support"
    # The encoder (null: model.name_or_path, the run's own BERT).
    model: Optional[str] = None
    steps: int = 100
    batch_size: int = 32
    # InfoNCE temperature: similarities are divided by it before the softmax.
    temperature: float = 0.05
    # Other answers of the same intent in a batch are not negatives.
    mask_same_intent: bool = True
    question_max_length: int = 64
    answer_max_length: int = 128
    # The index holds at most this many responses of each intent.
    answers_per_intent: int = 20
    # Answers returned per question (one per intent).
    top_k: int = 3
    # Company details filled into the answers' {{placeholders}}, e.g. {"Website Name": "shop.example"}
    # (merged over autogpt_jax.retrieval.answers.DEFAULT_COMPANY).
    company: dict[str, str] = dataclasses.field(default_factory=dict)
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(learning_rate=3e-5, warmup_steps=10))

    def __post_init__(self):
        check(self.temperature > 0, f"retrieval.temperature must be > 0, got {self.temperature}")
        check(self.steps >= 0 and self.batch_size >= 2, "retrieval.steps must be >= 0 and retrieval.batch_size >= 2")
        check(self.answers_per_intent >= 1 and self.top_k >= 1, "retrieval.answers_per_intent and top_k must be >= 1")
        check(self.question_max_length >= 8 and self.answer_max_length >= 8,
               "retrieval.question_max_length and answer_max_length must be >= 8")
        check(isinstance(self.company, dict) and all(isinstance(v, str) for v in self.company.values()),
               "retrieval.company must map placeholder names to strings")
