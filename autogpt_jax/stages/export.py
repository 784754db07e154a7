"""Stage ``export`` (run once, on the exported seed): a Hugging Face model directory that
PyTorch ``transformers`` loads, plus ``autogpt_jax.json`` (export_format); PEFT weights merged
(LoRA, AdaLoRA; the unmerged LoRA adapter beside them in the PEFT library's layout) or kept in a
side file; the retriever and the distilled student beside it when the run has them; a prompt
ensemble's other members as exports of their own under members/."""

from __future__ import annotations

import dataclasses

from flax import nnx

from autogpt_jax import export_format
from autogpt_jax.ensemble import Ensemble
from autogpt_jax.models import hf
from autogpt_jax.models import peft as peft_lib
from autogpt_jax.models import peft_export
from autogpt_jax.stages.context import RunContext, SeedState, ensure_classifier
from autogpt_jax.training.loop import is_main


def _peft_export(ctx: RunContext, model, out):
    """The model to save and the PEFT metadata of the export (None without PEFT)."""
    pc = ctx.cfg.peft
    if pc.method == "none" or not peft_lib.has_peft(model):
        return model, None
    meta = dataclasses.asdict(pc)
    if pc.method in ("lora", "adalora"):
        if pc.method == "lora" and model.arch != "gpt2":
            # Unmerged, in the PEFT library's layout, beside the merged model.
            peft_export.save_lora_adapter(model, out / "peft_adapter", pc, ctx.backbone.source)
            meta["adapter_dir"] = "peft_adapter"
        model = nnx.clone(model)
        peft_lib.merge(model)
        meta["merged"] = True
    else:  # adapters / prefixes / soft prompts change the architecture: kept in a side file
        out.mkdir(parents=True, exist_ok=True)
        peft_export.save_params(model, out / "peft.safetensors")
        meta["merged"] = False
    return model, meta


def _architecture(model, clf) -> str:
    """What the export is to PyTorch. An encoder that scores prompts keeps its MLM head even when it
    also carries a classification head (built for the eval.compare head baseline); a head-mode
    classifier is a BertForSequenceClassification."""
    if model.kind == "encoder" and clf is not None:
        return "BertForSequenceClassification" if clf.mode == "head" else "BertForMaskedLM"
    return hf.default_architecture(model)


def _save(ctx: RunContext, model, clf, out, task: dict, **meta):
    """One task model's export directory: the Hugging Face model (PEFT merged or beside it) and its
    ``autogpt_jax.json``."""
    saved, peft_meta = _peft_export(ctx, model, out)
    arch = _architecture(model, clf)
    hf.save_pretrained(saved, out, tokenizer=ctx.tokenizer, architecture=arch,
                       labels=clf.labels if clf is not None else None)  # collective: every process gathers
    if is_main():
        export_format.write_meta(out, source_model=ctx.backbone.source, architecture=arch, classifier=clf,
                                 task=task if clf is not None else None, peft_meta=peft_meta, **meta)


def run(ctx: RunContext, state: SeedState) -> SeedState:
    cfg, out = ctx.cfg, ctx.out / "export"
    if state.task is not None:
        state = ensure_classifier(ctx, state)
    clf = state.classifier
    task = {"dataset": cfg.data.dataset, "train_file": cfg.data.train_file}
    members = clf.members if isinstance(clf, Ensemble) else [clf]
    ensemble = None
    if isinstance(clf, Ensemble):  # member 0 at the top (what PyTorch loads), the others under members/
        dirs = ["."] + [f"members/{i}" for i in range(1, len(members))]
        ensemble = {"weighting": clf.weighting,
                    "members": [{**e, "dir": d, "weight": float(w)} for e, d, w in zip(clf.info, dirs, clf.weights)]}
        for m, d in zip(members[1:], dirs[1:]):
            _save(ctx, m.model, m, out / d, task)
    _save(ctx, state.model, members[0], out, task, handover=state.handover,
          retriever_dir="retriever" if state.retriever else None, top_k=cfg.retrieval.top_k, ensemble=ensemble)
    rep = {"dir": str(out)}
    if ensemble is not None:
        rep["ensemble_members"] = len(members)
    if state.task is not None:
        rep["seed"] = state.seed
    if state.retriever is not None:
        rc = cfg.retrieval
        state.retriever.save(out / "retriever", dataset=rc.dataset, top_k=rc.top_k, company=rc.company)
        rep["retriever_dir"] = str(out / "retriever")
    if state.student is not None:  # the distilled student: a BertForSequenceClassification that predict serves
        st, sdir = state.student, out / "student"
        hf.save_pretrained(st.model, sdir, tokenizer=st.tokenizer, labels=st.labels)
        if is_main():
            export_format.write_meta(sdir, source_model=cfg.distill.student,
                                     architecture=hf.default_architecture(st.model), classifier=st, task=task,
                                     distilled_from=ctx.backbone.source)
        rep["student_dir"] = str(sdir)
    return state.record_run("export", rep)
