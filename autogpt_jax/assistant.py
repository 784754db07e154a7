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

    def answer(self, questions: list[str], batch_size: int = 64) -> list[dict]:
        """One record per question: ``label``/``intent`` with ``probabilities`` (calibrated) and
        ``confidence``; ``handover`` (true below the threshold, or when there is nothing to
        answer) with its ``reason``; and ``answers``, the top answers with their scores."""
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
        found = self.retriever.search(texts, self.top_k)
        out: list[dict] = []
        pos = {i: j for j, i in enumerate(ok)}
        for i, q in enumerate(questions):
            if reasons[i] is not None:
                out.append({"label": None, "intent": None, "confidence": 0.0, "probabilities": {}, "handover": True,
                            "reason": f"cannot answer: {reasons[i]}", "answers": []})
                continue
            j = pos[i]
            p = probs[j]
            label = self.intent.labels[int(p.argmax())]
            rec = {"label": label, "intent": label, "confidence": float(p.max()),
                   "probabilities": {l: float(v) for l, v in zip(self.intent.labels, p)},
                   "handover": bool(hand[j]),
                   "reason": (f"confidence {float(p.max()):.2f} is below the hand-over threshold {h.threshold:.2f}"
                              if hand[j] else None),
                   "answers": found[j]}
            out.append(rec)
        return out

