"""Customer-service question answering: answer retrieval with a bi-encoder, and the assistant that
puts intent detection, retrieval and hand-over together.

- Bi-encoder: the run's BERT encoder, mean-pooled and unit-normalised (as sentence-transformers
  encoders are), the same weights for questions and answers. Fine-tuned contrastively on
  question → answer pairs with in-batch negatives and a symmetric InfoNCE loss (question→answer
  and answer→question cross-entropy over the batch's dot products divided by a temperature).
  Other pairs of the same intent in a batch are not negatives: their answers are right too, so
  they are masked out (``retrieval.mask_same_intent``).
- Answers: the Bitext responses of the training questions, grouped by intent (at most
  ``answers_per_intent`` per intent), with their ``{{placeholders}}`` filled from the company
  details in the config.
- Index: unit answer embeddings; top-k by dot product in JAX. With more than one device the
  embeddings are sharded by rows over all of them: each device takes its shard's top k, the k·n
  candidates are gathered and the top k of those is the answer (``AnswerIndex``).
- Held-out questions (the ``test`` split of ``bitext_support``, split by question) measure
  Recall@1/@5 and MRR; an answer is relevant when it belongs to the question's intent.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from autogpt_jax.data import batching
from autogpt_jax.data.batching import EpochIterator, pad_batch
from autogpt_jax.errors import AutoGPTJaxError
from autogpt_jax.training import objectives

Array = jax.Array

# Filled into the Bitext responses' {{placeholders}} (case-insensitive); retrieval.company overrides
# and extends it. Placeholders not listed: "...Anonymized" ones read "your <name>", bare numbers
# "your order", and the rest (the names of pages and buttons, "{{Order Details}}") their own name.
DEFAULT_COMPANY: dict[str, str] = {
    "Company Name": "Acme Shop",
    "Website Name": "acmeshop.example",
    "Website": "acmeshop.example",
    "Website URL": "https://acmeshop.example",
    "Company Website": "https://acmeshop.example",
    "Customer Support Phone Number": "+1 555 0100",
    "Customer Service Phone Number": "+1 555 0100",
    "Support Phone Number": "+1 555 0100",
    "Phone Number": "+1 555 0100",
    "Customer Support Email": "support@acmeshop.example",
    "Customer Support Email Address": "support@acmeshop.example",
    "Customer Service Email": "support@acmeshop.example",
    "Customer Service Email Address": "support@acmeshop.example",
    "Support Email": "support@acmeshop.example",
    "Support Email Address": "support@acmeshop.example",
    "Email": "support@acmeshop.example",
    "Live Chat": "live chat",
    "Customer Support Availability": "Monday to Friday, 8 am to 8 pm",
    "Customer Support Hours": "Monday to Friday, 8 am to 8 pm",
    "Customer Service Hours": "Monday to Friday, 8 am to 8 pm",
    "Operating Hours": "Monday to Friday, 8 am to 8 pm",
}

_PLACEHOLDER = re.compile(r"\{\{([^{}]*)\}\}")
# a response about one customer's particulars: an anonymised detail or a long number
_SPECIFIC = re.compile(r"\{\{[^{}]*(?:Anonymized|\d{6,})[^{}]*\}\}|\d{6,}", re.IGNORECASE)


class RetrievalError(AutoGPTJaxError, ValueError):
    """Retrieval cannot run as configured."""


def fill_placeholders(text: str, company: dict[str, str] | None = None) -> str:
    """Replace ``{{Name}}`` placeholders with company details (see ``DEFAULT_COMPANY``)."""
    table = {k.lower(): v for k, v in {**DEFAULT_COMPANY, **(company or {})}.items()}

    def sub(m: re.Match) -> str:
        name = m.group(1).strip()
        if name.lower() in table:
            return table[name.lower()]
        if name.lower().endswith("anonymized"):
            return "your " + name[: -len("anonymized")].strip().lower()
        if re.fullmatch(r"[0-9A-Fa-f]{8,}", name):
            return "your order"
        return name

    return _PLACEHOLDER.sub(sub, text)


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    intent: str


def build_answers(questions_ds, per_intent: int, company: dict[str, str] | None, seed: int = 0) -> list[Answer]:
    """The answer set: up to ``per_intent`` distinct filled-in responses of each intent's training
    questions (a seeded choice), intents in sorted order. Responses that repeat their question's
    own details (an order number, a name: Bitext's ``entity_value``) come last, so a general
    answer is not served with someone else's order number."""
    intents = list(questions_ds["intent"])
    responses = list(questions_ds["answer"])
    cols = questions_ds.column_names if hasattr(questions_ds, "column_names") else list(questions_ds)
    entities = list(questions_ds["entity_value"]) if "entity_value" in cols else [""] * len(intents)
    out: list[Answer] = []
    for intent in sorted(set(intents)):
        idx = [i for i, x in enumerate(intents) if x == intent]
        idx = [idx[j] for j in np.random.default_rng([seed, len(out)]).permutation(len(idx))]
        idx.sort(key=lambda i: (bool(entities[i]) and entities[i] in responses[i],  # stable: general ones first
                                _SPECIFIC.search(responses[i]) is not None))
        seen: set[str] = set()
        for i in idx:
            t = fill_placeholders(responses[i], company).strip()
            if t and t not in seen:
                seen.add(t)
                out.append(Answer(t, intent))
            if len(seen) >= per_intent:
                break
    return out


# --------------------------------------------------------------------------------------------
# encoder
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _embed(graphdef, state, ids, mask):
    return objectives.sentence_embeddings(nnx.merge(graphdef, state), ids, mask)


def embed(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """Unit-length mean-pooled embeddings (N × D, float32), batched by length bucket."""
    texts = list(texts)
    if not texts:
        return np.zeros((0, model.config.hidden_size), np.float32)
    seqs = batching.encode(tokenizer, texts, max_length)
    graphdef, state = nnx.split(model)
    out = np.zeros((len(seqs), model.config.hidden_size), np.float32)
    bs = batching.eval_batch_size(len(seqs), batch_size)
    for idx, b in batching.eval_batches(seqs, bs, tokenizer.pad_token_id or 0):
        e = np.asarray(_embed(graphdef, state, jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"])))
        out[idx[idx >= 0]] = e[idx >= 0]
    return out


def infonce_loss(model, batch: dict, rngs=None, *, temperature: float, mask_same_group: bool = True
                 ) -> tuple[Array, dict]:
    """Symmetric InfoNCE with in-batch negatives.

    batch: q_ids, q_mask (B × Lq), a_ids, a_mask (B × La), group (B; the intent id). Row i of
    ``S = q·aᵀ / temperature`` has its positive at column i; with ``mask_same_group`` the other
    answers of the same group leave the softmax (they are not wrong answers). The loss is the mean
    of the question→answer and answer→question cross-entropies.
    """
    q_BxD = objectives.sentence_embeddings(model, batch["q_ids"], batch["q_mask"], rngs)
    a_BxD = objectives.sentence_embeddings(model, batch["a_ids"], batch["a_mask"], rngs)
    s_BxB = (q_BxD @ a_BxD.T) / temperature
    B = s_BxB.shape[0]
    eye = jnp.eye(B, dtype=bool)
    if mask_same_group:
        same = batch["group"][:, None] == batch["group"][None, :]
        s_BxB = jnp.where(same & ~eye, -1e9, s_BxB)
    labels = jnp.arange(B)
    l_qa = -jnp.take_along_axis(jax.nn.log_softmax(s_BxB, -1), labels[:, None], -1).mean()
    l_aq = -jnp.take_along_axis(jax.nn.log_softmax(s_BxB.T, -1), labels[:, None], -1).mean()
    acc = (jnp.argmax(s_BxB, -1) == labels).mean()
    return 0.5 * (l_qa + l_aq), {"q_to_a_loss": l_qa, "a_to_q_loss": l_aq, "in_batch_accuracy": acc}


class PairBatches:
    """Shuffled, resumable batches of (question, answer, group) triples, each side padded to its
    own length bucket."""

    def __init__(self, q_seqs: list[np.ndarray], a_seqs: list[np.ndarray], groups: np.ndarray, batch_size: int,
                 seed: int, pad_id: int):
        if len(q_seqs) < batch_size:
            raise RetrievalError(f"retrieval.batch_size {batch_size} is larger than the {len(q_seqs)} training pairs")
        self.q, self.a, self.groups, self.pad = q_seqs, a_seqs, np.asarray(groups, np.int32), pad_id
        self.it = EpochIterator(len(q_seqs), batch_size, seed)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        idx, _ = self.it.next_indices()
        q_ids, q_mask = pad_batch([self.q[i] for i in idx], self.pad)
        a_ids, a_mask = pad_batch([self.a[i] for i in idx], self.pad)
        return {"q_ids": q_ids, "q_mask": q_mask, "a_ids": a_ids, "a_mask": a_mask, "group": self.groups[idx]}

    def state(self) -> dict[str, int]:
        return self.it.state()

    def restore(self, state: dict[str, Any]):
        self.it.restore(state)


# --------------------------------------------------------------------------------------------
# index
# --------------------------------------------------------------------------------------------

SHARD_AXIS = "shard"


@functools.partial(jax.jit, static_argnames=("k",))
def _top_k(emb_NxD, valid_N, q_BxD, k: int):
    s = jnp.where(valid_N[None, :], q_BxD @ emb_NxD.T, -jnp.inf)
    return jax.lax.top_k(s, k)


def _sharded_top_k(mesh: Mesh, k: int, rows_per_shard: int):
    k_local = min(k, rows_per_shard)

    def local(emb, valid, q):
        s = jnp.where(valid[None, :], q @ emb.T, -jnp.inf)
        v, i = jax.lax.top_k(s, k_local)
        i = i + jax.lax.axis_index(SHARD_AXIS) * rows_per_shard
        v_all = jax.lax.all_gather(v, SHARD_AXIS, axis=1, tiled=True)
        i_all = jax.lax.all_gather(i, SHARD_AXIS, axis=1, tiled=True)
        v2, j = jax.lax.top_k(v_all, k)
        return v2, jnp.take_along_axis(i_all, j, axis=1)

    f = jax.shard_map(local, mesh=mesh, in_specs=(P(SHARD_AXIS, None), P(SHARD_AXIS), P()), out_specs=(P(), P()),
                      check_vma=False)
    return jax.jit(f)


class AnswerIndex:
    """Unit answer embeddings and top-k search by dot product. ``shard``: split the rows over all
    devices (default: when there is more than one), for indexes larger than one device holds."""

    def __init__(self, embeddings_NxD: np.ndarray, answers: list[Answer], *, shard: bool | None = None,
                 devices: list | None = None):
        emb = np.asarray(embeddings_NxD, np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(answers):
            raise RetrievalError(f"{emb.shape[0] if emb.ndim == 2 else emb.shape} embeddings for {len(answers)} answers")
        if not answers:
            raise RetrievalError("the answer index is empty")
        self.answers = list(answers)
        self.n, self.dim = emb.shape
        devices = list(devices or jax.devices())
        self.sharded = len(devices) > 1 if shard is None else bool(shard)
        if self.sharded:
            n_dev = len(devices)
            rows = -(-self.n // n_dev)
            pad = rows * n_dev - self.n
            emb = np.concatenate([emb, np.zeros((pad, self.dim), np.float32)])
            valid = np.arange(rows * n_dev) < self.n
            self.mesh = Mesh(np.asarray(devices), (SHARD_AXIS,))
            self._emb = jax.device_put(emb, NamedSharding(self.mesh, P(SHARD_AXIS, None)))
            self._valid = jax.device_put(valid, NamedSharding(self.mesh, P(SHARD_AXIS)))
            self._rows = rows
            self._fns: dict[int, Any] = {}
        else:
            self._emb, self._valid = jnp.asarray(emb), jnp.ones(self.n, bool)

    def search(self, q_BxD: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores B × k, answer ids B × k), best first."""
        k = min(int(k), self.n)
        q = jnp.asarray(np.asarray(q_BxD, np.float32))
        if self.sharded:
            if k not in self._fns:
                self._fns[k] = _sharded_top_k(self.mesh, k, self._rows)
            v, i = self._fns[k](self._emb, self._valid, jax.device_put(q, NamedSharding(self.mesh, P())))
        else:
            v, i = _top_k(self._emb, self._valid, q, k)
        return np.asarray(v), np.asarray(i)

    def scores(self, q_BxD: np.ndarray) -> np.ndarray:
        """Every answer's score (B × N): for evaluation."""
        return np.asarray(q_BxD, np.float32) @ np.asarray(self._emb)[: self.n].T


def rank_metrics(scores_QxN: np.ndarray, q_groups: list[str], a_groups: list[str], ks=(1, 5)) -> dict[str, float]:
    """Recall@k (a relevant answer in the top k) and MRR (1 / rank of the first relevant answer);
    relevant = same group. Ties count against the query (pessimistic)."""
    scores = np.asarray(scores_QxN, np.float64)
    a = np.asarray(a_groups)
    rel = np.asarray(q_groups)[:, None] == a[None, :]
    if not rel.any(1).all():
        missing = sorted({g for g, r in zip(q_groups, rel.any(1)) if not r})
        raise RetrievalError(f"no answer in the index for intent(s) {missing}")
    best_rel = np.where(rel, scores, -np.inf).max(1)
    rank = 1 + (np.where(~rel, scores, -np.inf) >= best_rel[:, None]).sum(1)
    out = {f"recall@{k}": float((rank <= k).mean()) for k in ks}
    out["mrr"] = float((1.0 / rank).mean())
    return out


# --------------------------------------------------------------------------------------------
# retriever: encoder + index, saved beside the intent model
# --------------------------------------------------------------------------------------------


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
        """The top ``k`` answers per question with their cosine scores; with ``distinct_intents``,
        the best answer of each of the top ``k`` intents (three ways of saying one answer help no one)."""
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
                row.append({"answer": a.text, "intent": a.intent, "score": float(v)})
                if len(row) == k:
                    break
            out.append(row)
        return out

    def evaluate(self, questions: list[str], intents: list[str]) -> dict[str, float]:
        return rank_metrics(self.index.scores(self.encode_questions(questions)), intents,
                            [a.intent for a in self.answers])

    def save(self, out_dir: str | Path, **meta) -> Path:
        from autogpt_jax.models import hf

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
        from autogpt_jax.models import hf

        d = Path(directory)
        for name in ("retriever.json", "answers.jsonl", "answer_embeddings.npy"):
            if not (d / name).exists():
                raise RetrievalError(f"{d}: missing {name}; pass the export/ directory of a run with the retrieval stage")
        meta = json.loads((d / "retriever.json").read_text())
        lm = hf.load_model(d)
        answers = [Answer(r["answer"], r["intent"]) for r in map(json.loads, (d / "answers.jsonl").read_text().splitlines())]
        return cls(lm.model, lm.tokenizer(), answers, meta["question_max_length"], meta["answer_max_length"],
                   np.load(d / "answer_embeddings.npy"), shard)


# --------------------------------------------------------------------------------------------
# the assistant: intent + confidence + hand-over + answers
# --------------------------------------------------------------------------------------------

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
            from autogpt_jax.handover import Handover

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


def load_assistant(model_dir: str | Path) -> SupportAssistant:
    """The exported intent model (``model_dir``) and its retriever (``model_dir/retriever``)."""
    from autogpt_jax.predict import load_classifier

    d = Path(model_dir)
    meta = json.loads((d / "autogpt_jax.json").read_text())
    rdir = d / meta.get("retriever", "retriever")
    return SupportAssistant(load_classifier(d), Retriever.load(rdir), top_k=int(meta.get("top_k", 3)))


# --------------------------------------------------------------------------------------------
# the pipeline's retrieval stage
# --------------------------------------------------------------------------------------------


def pair_data(cfg) -> tuple[Any, Any]:
    """(train, held-out) question sets of the configured dataset (columns question, answer, intent)."""
    from autogpt_jax.data import sources

    ds = sources.load_dataset(cfg.retrieval.dataset)
    for split in ("train", "test"):
        if split not in ds or not {"question", "answer", "intent"} <= set(ds[split].column_names):
            raise RetrievalError(f"retrieval.dataset {cfg.retrieval.dataset!r} needs train and test splits with "
                                 "question, answer and intent columns (bitext_support has them)")
    return ds["train"], ds["test"]


def train_retriever(run) -> tuple[Retriever, dict[str, Any]]:
    """Contrastive fine-tuning of the bi-encoder, measured on the held-out questions before and after."""
    from autogpt_jax.models import hf
    from autogpt_jax.training import sharding as shd
    from autogpt_jax.training.loop import train_loop
    from autogpt_jax.training.steps import Trainer

    cfg, rc = run.cfg, run.cfg.retrieval
    train, held = pair_data(cfg)
    answers = build_answers(train, rc.answers_per_intent, rc.company, seed=cfg.data.split_seed)
    name = rc.model or cfg.model.name_or_path
    if not name:
        raise RetrievalError("retrieval.model is empty and so is model.name_or_path: name a BERT-family encoder")
    lm = hf.load_model(name, seed=cfg.seed, shardings=lambda key, shape, var: shd.variable_sharding(var, run.mesh))
    from autogpt_jax.models.bert import Bert

    if not isinstance(lm.model, Bert):
        raise RetrievalError(f"retrieval.model {name!r} is not a BERT-family encoder (the bi-encoder needs one)")
    model, tok = lm.model, lm.tokenizer()
    hq, hi = list(held["question"]), list(held["intent"])
    rep: dict[str, Any] = {"model": str(lm.path), "answers": len(answers), "intents": len({a.intent for a in answers}),
                           "train_pairs": len(train), "held_out_questions": len(hq), "temperature": rc.temperature}
    t0 = time.perf_counter()
    before = Retriever(model, tok, answers, rc.question_max_length, rc.answer_max_length)
    rep["index_build_s"] = round(time.perf_counter() - t0, 2)
    rep["before"] = before.evaluate(hq, hi)
    if rc.steps > 0:
        if rc.batch_size % shd.batch_divisor(run.mesh):
            raise RetrievalError(f"retrieval.batch_size {rc.batch_size} must be divisible by the data×fsdp mesh size")
        groups = {g: i for i, g in enumerate(sorted(set(train["intent"])))}
        q_seqs = batching.encode(tok, list(train["question"]), rc.question_max_length)
        a_seqs = batching.encode(tok, [fill_placeholders(a, rc.company) for a in train["answer"]], rc.answer_max_length)
        batches = PairBatches(q_seqs, a_seqs, np.asarray([groups[g] for g in train["intent"]]), rc.batch_size,
                              cfg.seed, tok.pad_token_id or 0)
        loss = functools.partial(infonce_loss, temperature=rc.temperature, mask_same_group=rc.mask_same_intent)
        trainer, state = Trainer.create(model, loss, rc.optim, rc.steps, run.mesh)
        state, summary = train_loop(stage="retrieval", trainer=trainer, state=state, batches=batches,
                                    total_steps=rc.steps, rng=jax.random.key(cfg.seed), logger=run.logger,
                                    log_every=max(1, rc.steps // 10), tokens_key="q_mask",
                                    progress=cfg.logging.progress)
        model = trainer.model(state)
        rep["train"] = {"steps": rc.steps, "batch_size": rc.batch_size, "final_loss": summary["final_loss"],
                        "wall_time_s": summary["wall_time_s"]}
    after = Retriever(model, tok, answers, rc.question_max_length, rc.answer_max_length)
    rep["after"] = after.evaluate(hq, hi)
    return after, rep
