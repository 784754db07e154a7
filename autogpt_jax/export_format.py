"""The export format: ``autogpt_jax.json`` beside a Hugging Face model directory.

Written once here (by the export stage) and read here (by predict, the demo, the Space builder):
the task's labels, the classifier mode (prompt | similarity | head), template, demonstrations,
label words, PEFT settings, the calibration's class bias, the hand-over calibration and, for a
customer-service export, where the retriever lives. A prompt ensemble is its first member's export
with ``ensemble`` (weighting, and each member's directory, weight, prompt and dev accuracy); the
other members are exports of their own under ``members/``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from autogpt_jax.version import __version__
import numpy as np

from autogpt_jax.assistant import SupportAssistant
from autogpt_jax.config import PeftConfig
from autogpt_jax.ensemble import Ensemble
from autogpt_jax.errors import PredictError
from autogpt_jax.handover import Handover
from autogpt_jax.inference import Classifier, make_classifier
from autogpt_jax.models import hf
from autogpt_jax.models import peft
from autogpt_jax.models import peft_export
from autogpt_jax.models.scan import stack_layers, wants_scan
from autogpt_jax.prompts.templates import Template, Verbalizer
from autogpt_jax.retrieval.retriever import Retriever

META_FILE = "autogpt_jax.json"


def is_export(model_dir: str | Path) -> bool:
    return (Path(model_dir) / META_FILE).is_file()


def heavy(meta: dict) -> bool:
    """An export that a demo serves through its distilled student when there is one (the teacher
    is not loaded): a prompt ensemble or a decoder."""
    return bool(meta.get("ensemble")) or str(meta.get("architecture", "")).endswith("ForCausalLM")


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    """The export's metadata; a clear error when ``model_dir`` is not an export directory."""
    d = Path(model_dir)
    if not d.is_dir():
        raise PredictError(f"--model_dir {d}: no such directory")
    if not is_export(d):
        raise PredictError(f"{d}: no {META_FILE}; pass the export/ directory of a run with a task "
                           "(stages ...,finetune,export)")
    return json.loads((d / META_FILE).read_text())


def write_meta(out_dir: str | Path, *, source_model: str, architecture: str, classifier: Classifier | None = None,
               task: dict | None = None, peft_meta: dict | None = None, handover: Handover | None = None,
               retriever_dir: str | None = None, top_k: int | None = None, distilled_from: str | None = None,
               ensemble: dict | None = None) -> Path:
    """``autogpt_jax.json`` for a model saved in ``out_dir``: the task fields when ``classifier`` is given."""
    meta: dict[str, Any] = {"autogpt_jax_version": __version__, "source_model": source_model,
                            "architecture": architecture, "task": None}
    if distilled_from is not None:
        meta["distilled_from"] = distilled_from
    clf = classifier
    if clf is not None:
        meta["task"] = task
        meta.update(labels=clf.labels, mode=clf.mode, max_length=clf.max_length, pooling=clf.pooling)
        if clf.mode != "head" or distilled_from is None:
            meta.update(template=clf.template.source if clf.template else None,
                        demonstrations=[list(d) for d in clf.template.demos] if clf.template else None,
                        label_words=clf.label_words, peft=peft_meta,
                        similarity_scale=clf.scale if clf.mode == "similarity" else None,
                        handover=handover.to_json() if handover is not None else None)
        if clf.logit_bias is not None:
            meta["logit_bias"] = [float(b) for b in clf.logit_bias]
    if ensemble is not None:
        meta["ensemble"] = ensemble
    if retriever_dir is not None:
        meta.update(retriever=retriever_dir, top_k=top_k)
    path = Path(out_dir) / META_FILE
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def join_ensemble(export_dir: str | Path, ensemble: dict) -> Path:
    """Make the export in ``export_dir`` (member 0, at the top) an ensemble's: its metadata gains
    ``ensemble`` (each member's directory relative to ``export_dir``, weight and provenance)."""
    path = Path(export_dir) / META_FILE
    meta = json.loads(path.read_text())
    meta["ensemble"] = ensemble
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_classifier(model_dir: str | Path, *, scan_layers: bool | None = None) -> Classifier | Ensemble:
    """The exported model with its task metadata (labels, template, label words, head, bias); its
    layers scanned as ``model.scan_layers`` would (None: auto, by depth). An ensemble's export
    loads every member."""
    d = Path(model_dir)
    meta = read_meta(d)
    ens = meta.get("ensemble")
    if ens:
        members = [_load_one(d / m["dir"], read_meta(d / m["dir"]), scan_layers) for m in ens["members"]]
        out = Ensemble(members, np.asarray([m["weight"] for m in ens["members"]]), ens.get("weighting", "dev"),
                       ens["members"])
        out.handover = members[0].handover
        return out
    return _load_one(d, meta, scan_layers)


def _load_one(d: Path, meta: dict, scan_layers: bool | None) -> Classifier:
    if not meta.get("labels"):
        raise PredictError(f"{d / META_FILE}: this export has no task (it came from a pretraining-only run)")
    labels, mode = meta["labels"], meta["mode"]
    if mode not in ("prompt", "similarity", "head"):
        raise PredictError(f"{d / META_FILE}: unknown mode {mode!r} (expected prompt, similarity or head)")
    lm = hf.load_model(d, num_labels=len(labels) if mode == "head" else 0)
    tok = lm.tokenizer()
    pm = meta.get("peft")
    if pm and not pm.get("merged", True):  # adapters / prefixes / soft prompts: re-attach, then fill
        fields = {f.name for f in dataclasses.fields(PeftConfig)}
        peft.apply(lm.model, PeftConfig(**{k: v for k, v in pm.items() if k in fields}))
        peft_export.load_params(lm.model, d / "peft.safetensors")
    if wants_scan(lm.model, scan_layers):
        stack_layers(lm.model)
    template = verb = None
    if mode in ("prompt", "similarity"):
        template = Template(meta["template"]).with_demos(meta.get("demonstrations") or [])
        verb = Verbalizer(tuple(tuple(w) for w in meta["label_words"]))
    clf = make_classifier(mode, lm.model, tok, labels, template, verb, max_length=meta.get("max_length", 128),
                          pooling=meta.get("pooling", "mean"), scale=meta.get("similarity_scale") or 20.0)
    if meta.get("handover"):
        clf.handover = Handover(**meta["handover"])
    if meta.get("logit_bias") is not None:
        clf.logit_bias = np.asarray(meta["logit_bias"], np.float32)
    return clf


def load_assistant(model_dir: str | Path, *, retriever: Retriever | None = None) -> SupportAssistant:
    """The exported intent model (``model_dir``) and its retriever (``model_dir/retriever``, or
    ``retriever`` when the caller has it loaded already)."""
    d = Path(model_dir)
    meta = read_meta(d)
    if retriever is None:
        retriever = Retriever.load(d / meta.get("retriever", "retriever"))
    return SupportAssistant(load_classifier(d), retriever, top_k=int(meta.get("top_k", 3)))
