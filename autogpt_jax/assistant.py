"""The customer-service assistant: intent detection with its calibrated hand-over threshold, and
answer retrieval (``autogpt_jax.retrieval``), put together.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from autogpt_jax.handover import Handover
from autogpt_jax.retrieval.retriever import Retriever

MAX_QUESTION_CHARS = 2000  # longer input is cut here before tokenising (the encoders read 64 tokens)
UNHAPPY_AT = 0.85  # negative sentiment at or above this probability flags the conversation for a human


def unhappy(probabilities: dict[str, float] | None, threshold: float = UNHAPPY_AT) -> bool:
    """Whether a sentiment record's probability of ``negative`` reaches ``threshold``."""
    neg = (probabilities or {}).get("negative")
    return neg is not None and neg >= threshold


def _unanswerable(text: str, tokenizer) -> str | None:
    if not text.strip():
        return "empty question"
    ids = tokenizer(text[:MAX_QUESTION_CHARS], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    if not any(i not in special for i in ids):
        return "no words the model knows (only symbols, emoji or unknown characters)"
    return None


@dataclasses.dataclass
class SupportAssistant:
    """Intent classifier (with its calibrated hand-over threshold) + answer retriever."""

    intent: Any  # inference.Classifier with .handover
    retriever: Retriever
    top_k: int = 3

    def classify(self, questions: list[str], batch_size: int = 64) -> list[dict]:
        """One record per question: ``label``/``intent`` with ``probabilities`` (calibrated) and
        ``confidence``; ``handover`` (true below the threshold, or when there is nothing to
        answer) with its ``reason``; ``text``, the question as read (cut at MAX_QUESTION_CHARS)."""
        questions = [str(q) if q is not None else "" for q in questions]
        clean = [q.replace("\x00", " ")[:MAX_QUESTION_CHARS] for q in questions]
        reasons = [_unanswerable(q, self.intent.tokenizer) for q in clean]
        ok = [i for i, r in enumerate(reasons) if r is None]
        texts = [clean[i] for i in ok]
        logits = self.intent.logits(texts, batch_size) if texts else np.zeros((0, len(self.intent.labels)))
        h = self.intent.handover
        if h is None:
            h = Handover()
        probs, hand = h.decide(logits) if texts else (logits, np.zeros(0, bool))
        out: list[dict] = []
        pos = {i: j for j, i in enumerate(ok)}
        for i in range(len(questions)):
            if reasons[i] is not None:
                out.append({"label": None, "intent": None, "confidence": 0.0, "probabilities": {}, "handover": True,
                            "reason": f"cannot answer: {reasons[i]}", "text": clean[i]})
                continue
            j = pos[i]
            p = probs[j]
            label = self.intent.labels[int(p.argmax())]
            out.append({"label": label, "intent": label, "confidence": float(p.max()),
                        "probabilities": {l: float(v) for l, v in zip(self.intent.labels, p)},
                        "handover": bool(hand[j]),
                        "reason": (f"confidence {float(p.max()):.2f} is below the hand-over threshold "
                                   f"{h.threshold:.2f}" if hand[j] else None),
                        "text": clean[i]})
        return out

    def answer(self, questions: list[str], batch_size: int = 64) -> list[dict]:
        """:meth:`classify`'s records with ``answers``: the top answers with their scores (none for
        a question there is nothing to answer in)."""
        recs = self.classify(questions, batch_size)
        asked = [r["text"] for r in recs if r["intent"] is not None]
        found = iter(self.retriever.search(asked, self.top_k))
        out = []
        for r in recs:
            r = {k: v for k, v in r.items() if k != "text"}
            out.append({**r, "answers": next(found) if r["intent"] is not None else []})
        return out
