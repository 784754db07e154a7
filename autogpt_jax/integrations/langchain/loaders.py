"""The models behind the LangChain components, loaded once per process and shared.

LangChain builds components freely (langchain-tests builds a fresh one for every test, and ten per
round to time ``__init__``), so the components hold only a name or a directory and load here, on
first use: one decoder, encoder, assistant or classifier per directory, whatever the number of
components that name it. Loading takes a lock; generation and scoring do not need one (the jitted
functions are pure and the weights are never written).
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, Callable

from flax import nnx

from autogpt_jax.assistant import SupportAssistant
from autogpt_jax.errors import IntegrationError
from autogpt_jax.export_format import META_FILE, heavy, is_export, load_assistant, load_classifier, read_meta
from autogpt_jax.models import build, hf, hub
from autogpt_jax.retrieval.retriever import Retriever

_LOCK = threading.RLock()
_LOADED: dict[tuple[str, str], Any] = {}


def _once(kind: str, name: str, load: Callable[[], Any]) -> Any:
    p = Path(name).expanduser()
    key = (kind, str(p.resolve()) if p.exists() else name)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = load()
        return _LOADED[key]


def _export_dir(name: str | Path, what: str) -> Path:
    d = Path(name).expanduser()
    if not d.is_dir():
        raise IntegrationError(f"{what}: {d} is not a directory; pass the export/ directory of a run "
                               "(for example runs/support_qa/export after `make demo`)")
    return d


@dataclasses.dataclass(frozen=True)
class Decoder:
    """A decoder split for generation (``graphdef``, ``state``), with its tokenizer."""

    graphdef: Any
    state: Any
    tokenizer: Any
    max_positions: int
    chat: bool  # the tokenizer has a chat template


def decoder(name_or_path: str) -> Decoder:
    """A decoder (GPT-2 or Llama family) from an export or model directory, a .gguf file or a
    packaged short name such as ``smollm2-135m``."""
    def load():
        path = hub.resolve(name_or_path)  # a clear ModelNotFoundError when it names nothing
        lm = hf.load_model(path)
        if not build.is_decoder(lm.model):
            raise IntegrationError(f"{name_or_path}: this is an encoder ({lm.model.arch}); ChatAutoGPTJax generates "
                                   "text with a decoder (GPT-2 or Llama family): pass a decoder's export or model "
                                   "directory, or 'smollm2-135m'")
        tok = lm.tokenizer()
        graphdef, state = nnx.split(lm.model)
        return Decoder(graphdef, state, tok, build.max_positions(lm.model), bool(getattr(tok, "chat_template", None)))
    return _once("decoder", str(name_or_path), load)


@dataclasses.dataclass(frozen=True)
class Encoder:
    """A sentence encoder: the model, its tokenizer and the lengths it reads queries and documents at."""

    model: Any
    tokenizer: Any
    query_max_length: int
    document_max_length: int


def _answer_index(d: Path) -> Path | None:
    """The directory of the answer index in ``d`` (``d`` itself, or a customer-service export's
    retriever/), or None."""
    if (d / "retriever.json").is_file():
        return d
    sub = read_meta(d).get("retriever") if is_export(d) else None
    return d / sub if sub else None


def retriever_dir(name: str | Path) -> Path:
    """The retriever of a customer-service export (``export/retriever``), or ``name`` itself when it
    is that retriever directory."""
    d = _export_dir(name, "the retriever")
    found = _answer_index(d)
    if found is None:
        raise IntegrationError(f"{d} has no answer index (retriever.json); pass the export/ directory of a "
                               "customer-service run (configs/support_qa.yaml, with the retrieval stage) or its "
                               "retriever/ folder")
    return found


def retriever(name: str | Path) -> Retriever:
    """The answer retriever of a customer-service export (or its retriever/ folder): one per index,
    shared with the assistant of the same export."""
    d = retriever_dir(name)
    return _once("retriever", str(d), lambda: Retriever.load(d))


def encoder(name_or_path: str) -> Encoder:
    """The bi-encoder of a customer-service export (its retriever, at its question and answer
    lengths), or any encoder: an export or model directory, or a packaged short name such as
    ``minilm-l6``."""
    p = Path(name_or_path).expanduser()
    if p.is_dir() and _answer_index(p) is not None:
        r = retriever(p)
        return Encoder(r.model, r.tokenizer, r.question_max_length, r.answer_max_length)

    def load():
        lm = hf.load_model(hub.resolve(name_or_path))
        if build.is_decoder(lm.model):
            raise IntegrationError(f"{name_or_path}: this is a decoder ({lm.model.arch}); AutoGPTJaxEmbeddings "
                                   "embeds with an encoder: pass a customer-service export (its retriever), an "
                                   "encoder's export or model directory, or 'minilm-l6'")
        return Encoder(lm.model, lm.tokenizer(), 128, 128)
    return _once("encoder", str(name_or_path), load)


def support_export(name: str | Path) -> Path:
    """``name`` when it is a customer-service export (intent with hand-over, and a retriever)."""
    d = _export_dir(name, "the customer-service model")
    meta = read_meta(d)
    if not meta.get("handover") or not meta.get("retriever"):
        raise IntegrationError(f"{d}: not a customer-service export (its {META_FILE} has "
                               f"{'no hand-over calibration' if not meta.get('handover') else 'no retriever'}); "
                               "pass the export/ of configs/support_qa.yaml (for example runs/support_qa/export)")
    return d


def assistant(name: str) -> SupportAssistant:
    """The customer-service assistant (intent, calibrated hand-over, answers) of an export."""
    def load():
        d = support_export(name)
        return load_assistant(d, retriever=retriever(d))
    return _once("assistant", str(name), load)


def sentiment_export(name: str | Path) -> Path:
    """The directory the sentiment model is served from: the export's distilled student when it has
    one and is a prompt ensemble or a decoder (as the demo serves it), else the export itself."""
    d = _export_dir(name, "the sentiment model")
    meta = read_meta(d)
    if "negative" not in [str(l).lower() for l in meta.get("labels") or []]:
        raise IntegrationError(f"{d}: not a sentiment export (its labels are {meta.get('labels')}, with no "
                               "'negative'); pass the export/ of a sentiment run (for example "
                               "runs/sentiment_mr_best/export after `make demo`)")
    student = d / "student"
    return student if is_export(student) and heavy(meta) else d


def sentiment(name: str):
    """The sentiment classifier of an export, as :func:`sentiment_export` picks it."""
    return _once("sentiment", str(name), lambda: load_classifier(sentiment_export(name)))
