"""The retriever: the bi-encoder and its answer index, saved beside the intent model (a Hugging Face
BERT directory with ``answers.jsonl``, ``answer_embeddings.npy`` and ``retriever.json``).
Held-out questions (the ``test`` split of ``bitext_support``, split by question) measure
Recall@1/@5 and MRR (``Retriever.evaluate``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from autogpt_jax.errors import RetrievalError
from autogpt_jax.models import hf
from autogpt_jax.retrieval.answers import Answer
from autogpt_jax.retrieval.encoder import embed
from autogpt_jax.retrieval.index import AnswerIndex, rank_metrics

@dataclasses.dataclass
class Retriever:
    model: nnx.Module
    tokenizer: Any
    answers: list[Answer]
    question_max_length: int = 64
    answer_max_length: int = 128
    embeddings: np.ndarray | None = None
    shard: bool | None = None

    def __post_init__(self):
        if self.embeddings is None:
            self.embeddings = embed(self.model, self.tokenizer, [a.text for a in self.answers], self.answer_max_length)
        self.index = AnswerIndex(self.embeddings, self.answers, shard=self.shard)

    def encode_questions(self, questions: list[str]) -> np.ndarray:
        return embed(self.model, self.tokenizer, questions, self.question_max_length)

    def search(self, questions: list[str], k: int = 3, *, distinct_intents: bool = True) -> list[list[dict]]:
        """The top ``k`` answers per question with their cosine scores and their ``id`` (the line of
        ``answers.jsonl``); with ``distinct_intents``, the best answer of each of the top ``k``
        intents (three ways of saying one answer help no one)."""
        if not questions:
            return []
        q = self.encode_questions(questions)
        depth = min(self.index.n, max(4 * k, 32) if distinct_intents else k)
        vals, ids = self.index.search(q, depth)
        out = []
        for vs, js in zip(vals, ids):
            row, seen = [], set()
            for v, j in zip(vs, js):
                a = self.answers[int(j)]
                if distinct_intents and a.intent in seen:
                    continue
                seen.add(a.intent)
                row.append({"answer": a.text, "intent": a.intent, "score": float(v), "id": int(j)})
                if len(row) == k:
                    break
            out.append(row)
        return out

    def evaluate(self, questions: list[str], intents: list[str]) -> dict[str, float]:
        return rank_metrics(self.index.scores(self.encode_questions(questions)), intents,
                            [a.intent for a in self.answers])

    def save(self, out_dir: str | Path, **meta) -> Path:
        out = Path(out_dir)
        hf.save_pretrained(self.model, out, tokenizer=self.tokenizer)
        if jax.process_index() == 0:
            with open(out / "answers.jsonl", "w") as f:
                for a in self.answers:
                    f.write(json.dumps({"answer": a.text, "intent": a.intent}) + "\n")
            np.save(out / "answer_embeddings.npy", self.embeddings)
            (out / "retriever.json").write_text(json.dumps(
                {"question_max_length": self.question_max_length, "answer_max_length": self.answer_max_length,
                 "answers": len(self.answers), "pooling": "mean", "normalized": True, **meta}, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path, *, shard: bool | None = None) -> "Retriever":
        d = Path(directory)
        for name in ("retriever.json", "answers.jsonl", "answer_embeddings.npy"):
            if not (d / name).exists():
                raise RetrievalError(f"{d}: missing {name}; pass the export/ directory of a run with the retrieval stage")
        meta = json.loads((d / "retriever.json").read_text())
        lm = hf.load_model(d)
        answers = [Answer(r["answer"], r["intent"]) for r in map(json.loads, (d / "answers.jsonl").read_text().splitlines())]
        return cls(lm.model, lm.tokenizer(), answers, meta["question_max_length"], meta["answer_max_length"],
                   np.load(d / "answer_embeddings.npy"), shard)

