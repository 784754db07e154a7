"""The services behind the demo (demo/app.py): the sentiment model (served by its distilled
student when the model is over the latency budget), the customer-service assistant, the batch
shapes they are compiled for, the HTTP API's records, the "How it works" text and where the
export directories are found. No Gradio here: app.py holds the UI and the CLI.
"""

from __future__ import annotations

import html
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

# Make autogpt_jax importable before anything imports it (so this must stay above the imports
# below): a Space ships autogpt_jax/ beside app.py and this file; in the repository it is one
# level up. Whoever imports this module (app.py, the tests) gets it without setting sys.path.
HERE = Path(__file__).resolve().parent
for _root in (HERE, HERE.parent):
    if (_root / "autogpt_jax").is_dir():
        sys.path.insert(0, str(_root))
        break

import numpy as np  # noqa: E402

from autogpt_jax.assistant import UNHAPPY_AT, unhappy  # noqa: E402
from autogpt_jax.data.batching import EVAL_BUCKETS  # noqa: E402
from autogpt_jax.export_format import META_FILE, heavy, is_export, load_assistant, load_classifier, read_meta  # noqa: E402
from autogpt_jax.inference import predict_records  # noqa: E402
from autogpt_jax.training.compilation import OFF_HELP, enable_cache  # noqa: E402,F401  (app.py takes them from here)

log = logging.getLogger("autogpt_jax.demo")

MAX_CHARS = 20_000  # longer input is cut (the models read 64 tokens of it)
NEGATIVE_ESCALATION = UNHAPPY_AT  # negative sentiment at or above this probability flags the chat for a human
LATENCY_BUDGET_MS = 50.0  # above this (median, one request) the sentiment tab serves the distilled student
MAX_BATCH = 16  # API requests waiting in the queue are answered together, up to this many per call
API_CONCURRENCY = 2  # batched calls running at once (one per CPU core here)
WARMUP_BATCHES = (1, 2, 4, 8, 16)  # the batch shapes served (see _batch), compiled at start
# Which of them to compile at start (comma-separated; empty: none): the rest compile on first use.
# The tests set "1" so that an app starts in seconds; a deployment keeps them all.
WARMUP_ENV = "AUTOGPT_JAX_DEMO_WARMUP_BATCHES"
SENTIMENT_ENV = "AUTOGPT_JAX_SENTIMENT_MODEL"
SUPPORT_ENV = "AUTOGPT_JAX_SUPPORT_MODEL"


def clean(text: Any) -> str:
    """Whatever arrives, as a string without null bytes, at most MAX_CHARS long, stripped."""
    s = "" if text is None else str(text)
    return s.replace("\x00", "")[:MAX_CHARS].strip()


def _report(export_dir: Path) -> dict:
    for p in (export_dir.parent / "report.json", export_dir / "report.json"):
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except (OSError, ValueError):
                log.warning("%s: unreadable report", p)
    return {}


# --------------------------------------------------------------------------------------------
# batch shapes
# --------------------------------------------------------------------------------------------


def warmup_batches(spec: str | None) -> tuple[int, ...]:
    """Parse a --warmup-batches value ("1,2,4,8,16"; "" for none) into served batch sizes."""
    if spec is None:
        return WARMUP_BATCHES
    try:
        sizes = tuple(int(x) for x in spec.split(",") if x.strip())
    except ValueError:
        sizes = (-1,)
    bad = [n for n in sizes if n not in WARMUP_BATCHES]
    if bad:
        raise SystemExit(f"error: warm-up batch sizes must be among {','.join(map(str, WARMUP_BATCHES))}; got {spec!r}")
    return sizes


def _warm(clf, texts_by_len: list[str], batches: tuple[int, ...]) -> None:
    for n in batches:
        for t in texts_by_len:
            clf.logits([t] * n, batch_size=n)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _batch(n: int) -> int:
    """The compiled batch size that holds n texts (a power of two up to 16; larger inputs run in 16s)."""
    return next((b for b in WARMUP_BATCHES if n <= b), WARMUP_BATCHES[-1])


def _warm_texts(max_length: int) -> list[str]:
    """One text per length bucket up to max_length tokens (compiles every shape served)."""
    return [" ".join(["word"] * max(1, b - 12)) for b in EVAL_BUCKETS if b <= max_length + 16]


# --------------------------------------------------------------------------------------------
# sentiment
# --------------------------------------------------------------------------------------------


class Sentiment:
    """The exported sentiment classifier. Serves the distilled student (export/student) when there
    is one and the model itself is a prompt ensemble or a decoder (too heavy for a demo: it is not
    loaded at all), or when the model is slower than LATENCY_BUDGET_MS per request."""

    def __init__(self, export_dir: Path, *, warmup: tuple[int, ...] = WARMUP_BATCHES,
                 latency_budget_ms: float = LATENCY_BUDGET_MS):
        self.dir = export_dir
        self.report = _report(export_dir)
        self.meta = read_meta(export_dir)
        self.model = self.clf = None
        self.served = "model"
        self.model_ms = self.student_ms = None
        student = export_dir / "student"
        if not (is_export(student) and heavy(self.meta)):
            self.model = self.clf = load_classifier(export_dir)
            if warmup:  # the latency is measured on warm shapes only
                _warm(self.model, _warm_texts(self.model.max_length), warmup)
                self.model_ms = self._latency(self.model)
        if is_export(student) and (self.model is None or self.model_ms is None or self.model_ms > latency_budget_ms):
            self.clf, self.served = load_classifier(student), "student"
            if warmup:
                _warm(self.clf, _warm_texts(self.clf.max_length), warmup)
                self.student_ms = self._latency(self.clf)

    @staticmethod
    def _latency(clf) -> float:
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            clf.logits(["a quietly moving film with a great cast"], batch_size=1)
            times.append(1000 * (time.perf_counter() - t0))
        return float(np.median(times))

    @property
    def labels(self) -> list[str]:
        return list(self.clf.labels)

    def prompt_for(self, text: str) -> str:
        tpl = self.clf.template
        if tpl is None:
            return f"(classification head, no prompt) {text}"
        words = " / ".join(w[0] for w in (self.clf.label_words or []))
        return tpl.fill(text, "[" + words + "]") if words else tpl.fill(text, "[MASK]")

    def classify(self, texts: list[str]) -> list[dict]:
        texts = [clean(t) for t in texts]
        ok = [t for t in texts if t]
        recs = iter(predict_records(self.clf, ok, batch_size=_batch(len(ok))) if ok else [])
        return [{**next(recs), "model": self.served} if t else
                {"label": None, "probabilities": {}, "model": self.served, "message": "Type some text to classify."}
                for t in texts]

    def explain(self, text: str, max_words: int = 40) -> list[tuple[str, float]]:
        """Each word's share of the decision: how much the predicted class's probability falls
        when that word is left out (occlusion; one batch with every word dropped in turn)."""
        words = clean(text).split()[:max_words]
        if not words:
            return []
        variants = [" ".join(words)] + [" ".join(words[:i] + words[i + 1:]) or "." for i in range(len(words))]
        p = self.clf.probabilities(variants, batch_size=min(64, _pow2(len(variants))))
        c = int(p[0].argmax())
        return [(w, float(p[0, c] - p[i + 1, c])) for i, w in enumerate(words)]


# --------------------------------------------------------------------------------------------
# customer service
# --------------------------------------------------------------------------------------------


class Support:
    """Intent + calibrated hand-over + retrieved answers (autogpt_jax.retrieval), with the
    sentiment model flagging unhappy customers."""

    def __init__(self, export_dir: Path, sentiment: Sentiment | None, *, warmup: tuple[int, ...] = WARMUP_BATCHES):
        self.dir = export_dir
        self.report = _report(export_dir)
        self.assistant = load_assistant(export_dir)
        self.sentiment = sentiment
        if warmup:
            _warm(self.assistant.intent, _warm_texts(self.assistant.intent.max_length), warmup)
            r = self.assistant.retriever
            for n in warmup:
                for t in _warm_texts(r.question_max_length):
                    r.search([t] * n)

    def answer(self, texts: list[str]) -> list[dict]:
        texts = [clean(t) for t in texts]
        recs = self.assistant.answer(texts, batch_size=_batch(len(texts)))
        moods = self.sentiment.classify(texts) if self.sentiment is not None else [None] * len(texts)
        out = []
        for r, mood in zip(recs, moods):
            top = r["answers"][0]["answer"] if r["answers"] else None
            known = mood is not None and mood["label"] is not None
            out.append({"intent": r["intent"], "confidence": r["confidence"], "answer": top, "answers": r["answers"],
                        "handover": r["handover"], "reason": r["reason"],
                        "sentiment": {"label": mood["label"], "probabilities": mood["probabilities"]} if known else None,
                        "escalate": known and unhappy(mood["probabilities"], NEGATIVE_ESCALATION)})
        return out


def chat_reply(rec: dict) -> str:
    """The assistant's chat message (Markdown, every piece of text HTML-escaped)."""
    e = html.escape
    if rec["intent"] is None:
        parts = [f"Sorry, I cannot answer that ({e(rec['reason'].removeprefix('cannot answer: '))}). "
                 "I'm handing you over to a human agent."]
    elif rec["handover"]:
        parts = [f"I'm not sure I understood (confidence {100 * rec['confidence']:.0f}%), so I'm handing you over "
                 "to a human agent."]
        if rec["answer"]:
            parts.append(f"Meanwhile, this might help:\n\n{e(rec['answer'])}")
    else:
        parts = [e(rec["answer"] or "")]
    if rec["escalate"]:
        parts.append("⚠️ You sound unhappy, so I've flagged this conversation for a human agent as well.")
    if rec["intent"] is not None:
        parts.append(f"*Intent: {e(rec['intent'])} ({100 * rec['confidence']:.0f}%)*")
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------------
# the HTTP API: one record per text, also when a model is missing
# --------------------------------------------------------------------------------------------


def sentiment_records(sent: Sentiment | None, texts: list[str]) -> list[dict]:
    if sent is None:
        return [{"label": None, "probabilities": {}, "message": "no sentiment model is loaded"} for _ in texts]
    return sent.classify(texts)


def support_records(sup: Support | None, texts: list[str]) -> list[dict]:
    if sup is None:
        return [{"intent": None, "answer": None, "handover": True,
                 "message": "no customer-service model is loaded"} for _ in texts]
    return sup.answer(texts)


# --------------------------------------------------------------------------------------------
# "How it works"
# --------------------------------------------------------------------------------------------

PIPELINE = """
```
pretrained LM ─► prompt generation (templates + label words) ─► adaptive MLM on unlabelled task text
              ─► prompt-based fine-tuning (full or PEFT) ─► evaluate ─► export ─► this demo
```
"""


def _pct(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, dict):
        return f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}" if v.get("n", 1) > 1 else f"{100 * v['mean']:.1f}"
    return f"{100 * v:.1f}"


def how_it_works(sent: Sentiment | None, sup: Support | None) -> str:
    e = html.escape
    out = ["## How it works", "Both models were made by the autogpt_jax pipeline from a pretrained encoder and a "
           "small labelled set:", PIPELINE]
    if sent is not None:
        r, m = sent.report, sent.meta
        summ = r.get("summary") or {}
        seed = (r.get("seeds") or [{}])[-1]
        src = Path(str(m.get("source_model")))
        name = src.parent.name if src.name == "model" else src.name  # packaged models live in .../<package>/model
        out += ["### Sentiment", f"- model: `{e(name)}` ({e(str(m.get('mode')))} scoring)"]
        if m.get("template"):
            out.append(f"- prompt chosen: `{e(m['template'])}`, label words {e(str(m.get('label_words')))}")
        rows = [("this model (few-shot)", summ.get("test_accuracy")), ("zero-shot prompt", summ.get("zero_shot_accuracy")),
                ("prompt fine-tuning, no adaptation", summ.get("prompt_ft_accuracy")),
                ("classifier-head fine-tuning", summ.get("head_ft_accuracy"))]
        ens = seed.get("ensemble") or {}
        if len(ens.get("members") or []) > 1:
            out.append(f"- a prompt ensemble of {len(ens['members'])} fine-tuned prompts ({e(ens['weighting'])} weights)")
        st = seed.get("selftrain") or {}
        for g in st.get("generations", []):
            if "test_accuracy" in g:
                rows.append((f"{'iPET' if st.get('ipet') else 'self-training'} generation {g['generation']}",
                             g["test_accuracy"]))
        d = seed.get("distill")
        if d:
            rows.append(("distilled student", d["student_test"]["accuracy"]))
        out.append("\n| model | test accuracy % |\n| --- | --- |")
        out += [f"| {n} | {_pct(v)} |" for n, v in rows if v is not None]
        served = "the distilled student" if sent.served == "student" else "the model itself"
        lat = sent.student_ms if sent.served == "student" else sent.model_ms
        out.append(f"\nServing {served}" + (f" ({lat:.0f} ms per request here)" if lat is not None else "")
                   + (f"; the model itself takes {sent.model_ms:.0f} ms" if sent.served == "student" and sent.model_ms else "")
                   + ".")
        if r.get("config", {}).get("data", {}).get("dataset"):
            out.append(f"\nTrained on `{e(str(r['config']['data']['dataset']))}` with "
                       f"K={r['config']['data']['k_shot']} examples per class.")
    if sup is not None:
        r = sup.report
        seed = (r.get("seeds") or [{}])[-1]
        ret = r.get("retrieval") or {}
        ho = seed.get("handover") or {}
        out += ["### Customer service",
                f"- intent model: test accuracy {_pct((seed.get('test') or {}).get('accuracy'))} % on held-out "
                f"questions ({len(sup.assistant.intent.labels)} intents)",
                f"- hand-over below confidence {ho.get('threshold', sup.assistant.intent.handover.threshold if sup.assistant.intent.handover else 0):.2f}"
                + (f": in-scope accuracy {_pct(ho['test'].get('in_scope_accuracy'))} %, out-of-scope recall "
                   f"{_pct(ho['test'].get('out_of_scope_recall'))} %" if ho.get("test") else "")]
        if ret:
            out.append(f"- answer retrieval ({ret['answers']} answers): Recall@1 {_pct(ret['before']['recall@1'])} → "
                       f"{_pct(ret['after']['recall@1'])} % after contrastive fine-tuning, MRR "
                       f"{ret['before']['mrr']:.3f} → {ret['after']['mrr']:.3f}")
        out.append(f"- negative sentiment ≥ {NEGATIVE_ESCALATION:.0%} flags the conversation for a human.")
    if sent is None and sup is None:
        out.append("No models are loaded.")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# finding and loading the exports
# --------------------------------------------------------------------------------------------


def _resolve(flag: str | None, env: str, names: list[Path]) -> Path | None:
    if flag:
        p = Path(flag)
        if not is_export(p):
            raise SystemExit(f"error: {p}: not an autogpt_jax export directory (no {META_FILE})")
        return p
    if os.environ.get(env):
        return _resolve(os.environ[env], env, names)
    return next((n for n in names if is_export(n)), None)


def find_exports(sentiment_flag: str | None, support_flag: str | None) -> tuple[Path | None, Path | None]:
    """The sentiment and support export directories: the flag, else its env var, else models/<name>
    beside this file (a Space), else the repository's runs/<run>/export; None where none is found."""
    root = HERE.parent if (HERE.parent / "autogpt_jax").is_dir() else HERE
    sdir = _resolve(sentiment_flag, SENTIMENT_ENV, [HERE / "models" / "sentiment",
                                                     root / "runs" / "sentiment_mr_best" / "export",
                                                     root / "runs" / "sentiment_mr" / "export"])
    qdir = _resolve(support_flag, SUPPORT_ENV, [HERE / "models" / "support", root / "runs" / "support_qa" / "export"])
    return sdir, qdir


def load(sentiment_dir: Path | None, support_dir: Path | None, *, warmup: tuple[int, ...] = WARMUP_BATCHES,
         latency_budget_ms: float = LATENCY_BUDGET_MS) -> tuple[Sentiment | None, Support | None]:
    t0 = time.perf_counter()
    sent = Sentiment(sentiment_dir, warmup=warmup, latency_budget_ms=latency_budget_ms) if sentiment_dir else None
    sup = Support(support_dir, sent, warmup=warmup) if support_dir else None
    print(f"models loaded and compiled in {time.perf_counter() - t0:.1f} s "
          f"(sentiment: {sentiment_dir or 'none'}, support: {support_dir or 'none'})", flush=True)
    return sent, sup
