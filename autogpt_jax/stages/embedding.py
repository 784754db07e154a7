"""Stage ``finetune`` with ``finetune.mode`` probe, setfit or auto: the embedding path beside the
prompt. ``probe`` fits a logistic head on the encoder's frozen sentence embeddings; ``setfit``
first tunes the encoder contrastively on pairs of the labelled rows; ``auto`` trains both and the
prompt fine-tuning of ``finetune.mode prompt`` (its lr grid) and keeps the best on dev (accuracy,
ties to the lower log-loss). When dev was held out of the user's rows, the chosen candidate trains
again on all of them."""

from __future__ import annotations

from typing import Any

import numpy as np

from autogpt_jax import embedding_head as eh
from autogpt_jax.config import OptimConfig
from autogpt_jax.data import batching
from autogpt_jax.data.task import Task
from autogpt_jax.ensemble import Ensemble, member_weights
from autogpt_jax.evaluation import evaluate, log_softmax
from autogpt_jax.pseudolabels import pool_subset, select_confident
from autogpt_jax.stages import finetune
from autogpt_jax.stages.context import RunContext, SeedState
from autogpt_jax.training.fit import fit


def _embed(ctx: RunContext, model, texts: list[str]) -> np.ndarray:
    return eh.mean_embeddings(model, ctx.tokenizer, texts, ctx.cfg.prompt.max_length, ctx.cfg.eval.batch_size)


def probe(ctx: RunContext, task: Task, model, *, l2: float | None = None,
          data: tuple[list[str], np.ndarray] | None = None,
          extra: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Any, dict]:
    """``model`` with a logistic head fitted on its frozen embeddings of the train rows (or
    ``data``; ``extra``: more rows as (embeddings, labels), the pool's pseudo-labelled texts), the
    L2 strength chosen on dev (or ``l2``); its dev figures."""
    fc = ctx.cfg.finetune
    texts, labels = data or (list(task.train["text"]), np.asarray(task.train["label"], np.int64))
    C = len(task.names)
    X = _embed(ctx, model, texts)
    if extra is not None:
        X, labels = np.concatenate([X, extra[0]]), np.concatenate([np.asarray(labels), extra[1]])
    if l2 is None:
        f, grid = eh.choose_probe(X, np.asarray(labels), _embed(ctx, model, list(task.dev["text"])),
                                  np.asarray(task.dev["label"]), C, fc.probe_l2_grid, balance=fc.balance)
    else:
        w = eh.balanced_weights(labels, C) if fc.balance else None
        f, grid = eh.ProbeFit(*eh.fit_logistic(X, np.asarray(labels), C, l2=l2, weights_N=w), l2), []
    m = eh.with_head(model, f)
    dev = finetune.dev_figures(ctx.classifier("head", m, task, None, None), task, ctx.cfg.eval.batch_size)
    return m, {"l2": f.l2, "l2_grid": grid, "best_dev_accuracy": dev["dev_accuracy"],
               "best_dev_log_loss": dev["dev_log_loss"], "rows": len(labels)}


def pool_rows(ctx: RunContext, task: Task, model) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """The pool texts the head of ``model`` labels most confidently, ``finetune.pool_labels`` of each
    class (class-balanced), as (texts, their embeddings, labels); None without a pool."""
    fc = ctx.cfg.finetune
    texts = pool_subset(task.pool, fc.pool_max, task.seed)
    if not texts:
        return None
    X = _embed(ctx, model, texts)
    probs = np.exp(log_softmax(eh.head_logits(model, X)))  # the head's logits: linear in the pooled embeddings
    sel = select_confident(probs, fc.pool_labels, 0.0)
    return ([texts[i] for i in sel], X[sel], probs[sel].argmax(-1)) if len(sel) else None


def contrastive(ctx: RunContext, task: Task, model, data: tuple[list[str], np.ndarray] | None = None,
                stage: str = "setfit"):
    """The encoder tuned on every pair of each batch of labelled rows (SetFit's objective; all
    weights trained); the tuned model and the run's summary."""
    fc = ctx.cfg.finetune
    texts, labels = data or (list(task.train["text"]), np.asarray(task.train["label"], np.int64))
    seqs = batching.encode(ctx.tokenizer, list(texts), ctx.cfg.prompt.max_length)
    bs = min(fc.setfit_batch_size, max(2, len(seqs)))
    batches = batching.ExampleBatches(seqs, {"labels": np.asarray(labels, np.int32)}, bs, task.seed + 71,
                                      pad_id=ctx.tokenizer.pad_token_id or 0)
    optim = OptimConfig(learning_rate=fc.setfit_lr, warmup_steps=min(10, fc.setfit_steps // 10), weight_decay=0.0)
    res = fit(stage=stage, model=model, loss=eh.pair_cosine_loss, optim=optim, steps=fc.setfit_steps,
              batches=batches, batch_size=bs, batch_key="finetune.setfit_batch_size", mesh=ctx.mesh,
              logger=ctx.logger, seed=ctx.cfg.seed, progress=ctx.cfg.logging.progress,
              log_every=max(1, fc.setfit_steps // 10))
    return res.model, {"steps": res.summary["steps"], "wall_time_s": res.summary["wall_time_s"]}


def setfit(ctx: RunContext, task: Task, model) -> tuple[Any, dict]:
    tuned, run = contrastive(ctx, task, model)
    m, rep = probe(ctx, task, tuned)
    return m, {**rep, "contrastive": run}


def refit_candidate(ctx: RunContext, state: SeedState, name: str, chosen: dict, data: tuple[list[str], np.ndarray],
                    pseudo: tuple[list[str], np.ndarray, np.ndarray] | None = None) -> tuple[Any, dict]:
    """Candidate ``name`` trained again on ``data`` (every labelled row) with what dev chose for it
    (``pseudo``: the kept pool texts, their embeddings and labels); the model and what it ran."""
    task, model, fc = state.task, state.model, ctx.cfg.finetune
    if name == "probe":
        return probe(ctx, task, model, l2=chosen["l2"], data=data, extra=pseudo and pseudo[1:])
    if name == "setfit":
        tuned, _ = contrastive(ctx, task, model, data=data, stage="setfit-refit")
        extra = pseudo and (_embed(ctx, tuned, pseudo[0]), pseudo[2])  # the tuned encoder's embeddings
        return probe(ctx, task, tuned, l2=chosen["l2"], data=data, extra=extra)
    m, r = finetune.refit(ctx, task, model, state.prompt_mode, state.template, state.verbalizer, {"chosen": chosen},
                          fc.mlm_weight)
    return m, r["refit"]


def _classifier(ctx: RunContext, state: SeedState, name: str, model):
    if name in ("probe", "setfit"):
        return ctx.classifier("head", model, state.task, None, None)
    return ctx.classifier(state.prompt_mode, model, state.task, state.template, state.verbalizer)


def combined(ctx: RunContext, state: SeedState, models: dict[str, Any], found: dict[str, tuple[Any, dict]]
             ) -> tuple[Ensemble, dict]:
    """The screened candidates as one ensemble: their class log-probabilities averaged, weighted by
    their dev accuracy; its dev figures."""
    names = list(models)
    info = [{"recipe": n, "dev_accuracy": found[n][1]["best_dev_accuracy"]} for n in names]
    ens = Ensemble([_classifier(ctx, state, n, models[n]) for n in names],
                   member_weights([e["dev_accuracy"] for e in info], "dev"), "dev", info)
    dev = evaluate(ens, state.task.dev, ctx.cfg.eval.batch_size)
    return ens, {"members": names, "dev_accuracy": dev["accuracy"], "dev_log_loss": dev["log_loss"]}


def _combined_result(ctx: RunContext, state: SeedState, found: dict[str, tuple[Any, dict]], rep: dict) -> SeedState:
    """The ensemble of the candidates as the task model; each member trained again on every
    labelled row first when dev was held out."""
    task, fc, model = state.task, ctx.cfg.finetune, state.model
    models = {n: m for n, (m, _) in found.items()}
    if task.dev_held_out and fc.refit:
        data = task.all_labelled()
        models = {n: refit_candidate(ctx, state, n, r, data)[0] for n, (_, r) in found.items()}
        rep["refit"] = {"rows": len(data[0])}
    ens, _ = combined(ctx, state, models, found)
    first = ens.members[0]
    return state.record("finetune", rep, model=first.model, finetune=rep["chosen"], classifier=ens, ensemble=ens,
                        pretuned=model, mode=first.mode if first.mode == "head" else state.prompt_mode)


def run(ctx: RunContext, state: SeedState) -> SeedState:
    fc, task, model = ctx.cfg.finetune, state.task, state.model
    encoder = ctx.kind == "encoder" and getattr(model, "classifier", None) is not None
    found: dict[str, tuple[Any, dict]] = {}
    if encoder and fc.mode in ("probe", "auto"):
        found["probe"] = probe(ctx, task, model)
    if encoder and fc.mode in ("setfit", "auto"):
        found["setfit"] = setfit(ctx, task, model)
    if fc.mode == "auto":  # the prompt (searched by the prompt stage) fine-tuned on its lr grid
        m, rep = finetune.grid_finetune(ctx, task, model, state.prompt_mode, state.template, state.verbalizer,
                                        stage="finetune", mlm_weight=fc.mlm_weight)
        found["prompt"] = (m, {**rep["chosen"], "grid": rep["grid"]})
    order = list(found)
    name = max(order, key=lambda n: (found[n][1]["best_dev_accuracy"], -(found[n][1]["best_dev_log_loss"] or 0.0),
                                     -order.index(n)))
    best, chosen = found[name]
    rep: dict[str, Any] = {"mode": name, "screened": {n: r for n, (_, r) in found.items()}, "chosen": chosen}
    mode = "head" if name in ("probe", "setfit") else state.prompt_mode
    if fc.mode == "auto" and fc.combine and len(found) > 1:
        ens, ens_rep = combined(ctx, state, {n: m for n, (m, _) in found.items()}, found)
        rep["ensemble"] = ens_rep
        if (ens_rep["dev_accuracy"], -ens_rep["dev_log_loss"]) > (chosen["best_dev_accuracy"],
                                                                  -(chosen["best_dev_log_loss"] or 0.0)):
            rep["mode"] = "ensemble"
            return _combined_result(ctx, state, found, rep)
    pseudo = None
    if mode == "head" and fc.pool_labels and task.pool:  # the head also learns the pool's confident texts
        pseudo = pool_rows(ctx, task, best)
        if pseudo is not None:
            m2, r2 = probe(ctx, task, best, l2=chosen["l2"], extra=pseudo[1:])
            kept = (r2["best_dev_accuracy"], -r2["best_dev_log_loss"]) >= (chosen["best_dev_accuracy"],
                                                                           -chosen["best_dev_log_loss"])
            rep["pool_labels"] = {"rows": int(len(pseudo[2])), "dev_accuracy": r2["best_dev_accuracy"],
                                  "dev_log_loss": r2["best_dev_log_loss"], "kept": kept}
            if kept:
                best, chosen = m2, {**chosen, **{k: r2[k] for k in ("best_dev_accuracy", "best_dev_log_loss")}}
            else:
                pseudo = None
    if task.dev_held_out and fc.refit:  # the chosen recipe again, on every labelled row
        data = task.all_labelled()
        best, r = refit_candidate(ctx, state, name, chosen, data, pseudo)
        rep["refit"] = {"rows": len(data[0]), **{k: v for k, v in r.items() if k in ("l2", "steps", "wall_time_s")}}
    return state.record("finetune", rep, model=best, finetune=chosen, classifier=None, pretuned=model, mode=mode)
