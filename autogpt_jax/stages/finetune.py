"""Stage ``finetune``: prompt-based (cloze / next-token / similarity) or head fine-tuning on the
K-shot split, once per learning rate of the grid (LM-BFF), the best on dev kept; full or
parameter-efficient; optionally with the joint loss L_task + λ·L_mlm."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from flax import nnx

from autogpt_jax.data import batching
from autogpt_jax.data.adaptation import JointBatches, adapt_batches
from autogpt_jax.data.task import Task
from autogpt_jax.errors import ConfigError
from autogpt_jax.embedding_head import balanced_weights
from autogpt_jax.evaluation import evaluate
from autogpt_jax.inference import prompt_inputs, word_table
from autogpt_jax.models import peft as peft_lib
from autogpt_jax.models.build import dtype_of, is_decoder
from autogpt_jax.prompts.templates import Template, Verbalizer
from autogpt_jax.stages.context import RunContext, SeedState
from autogpt_jax.training import objectives
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.fit import fit


def with_peft(ctx: RunContext, model, loss, steps: int, head_paths: tuple[str, ...], seed: int | None = None
              ) -> tuple[Any, dict]:
    """The model to train and the trainer arguments: with ``--peft.method``, a copy of ``model``
    with the method's parameters attached (unless it already carries them, as after a PEFT adapt
    stage), trained alone plus the head; full fine-tuning otherwise."""
    pc = ctx.cfg.peft
    if pc.method == "none":
        return model, {"loss": loss}
    if not peft_lib.has_peft(model):
        model = nnx.clone(model)
        peft_lib.apply(model, pc, seed=ctx.cfg.seed if seed is None else seed)
    kw: dict[str, Any] = {"loss": loss, "trainable": peft_lib.trainable_filter(pc, head_paths=head_paths),
                          "frozen_dtype": dtype_of(pc.frozen_dtype) if pc.frozen_dtype != "float32" else None}
    if pc.method == "adalora":
        kw["loss"] = peft_lib.with_orthogonality(loss, pc.orth_reg)
        kw["hook"] = peft_lib.adalora_update(pc, steps)
    return model, kw


def example_batches(ctx: RunContext, model, seqs: list[np.ndarray], fields: dict[str, np.ndarray], batch_size: int,
                    seed: int, label_ids: np.ndarray | None = None):
    """Fine-tuning batches: decoder prompts with single-token label words packed into rows
    (``finetune.pack``), everything else padded to a length bucket."""
    pad = ctx.tokenizer.pad_token_id or 0
    if ctx.cfg.finetune.pack and label_ids is not None and is_decoder(model) and label_ids.shape[-1] == 1:
        row_len = max(128, batching.bucket_length(max(len(s_) for s_ in seqs)))
        return batching.PackedExampleBatches(seqs, fields, batch_size, seed, pad_id=pad, row_len=row_len,
                                             row_multiple=shd.batch_divisor(ctx.mesh))
    return batching.ExampleBatches(seqs, fields, batch_size, seed, pad_id=pad)


def mlm_batches(ctx: RunContext, task: Task, model, template: Template, verb: Verbalizer, batch_size: int, seed: int):
    """The adaptation data (unlabelled task text + prompted training sentences) as LM batches."""
    ids_CxW, _ = word_table(ctx.tokenizer, model, verb, template)
    return adapt_batches(ctx.tokenizer, task.unlabeled, list(task.train["text"]), np.asarray(task.train["label"]),
                         template, ids_CxW, ctx.cfg.adapt, batch_size, seed, decoder=is_decoder(model))


def train_seed(ctx: RunContext, offset: int) -> int:
    """The seed of a training run (PEFT initialisation, dropout): the run's, moved by ``offset``
    (an ensemble member's seed index)."""
    return ctx.cfg.seed + 1000 * offset


def classifier_training(ctx: RunContext, task: Task, model, mode: str, template: Template | None,
                        verb: Verbalizer | None, *, steps: int, mlm_weight: float = 0.0,
                        data: tuple[list[str], np.ndarray] | None = None, seed_offset: int = 0,
                        consistency: tuple[list[str], list[str], float] | None = None) -> tuple[Any, Any, dict]:
    """What fine-tuning ``mode`` trains: the model (a PEFT copy with ``--peft.method``), the
    training batches (the K-shot split, or ``data``: texts with integer labels or N × C soft
    labels), and the trainer arguments (``loss``, and PEFT's filter and hook). ``consistency``:
    (clean texts, the same texts noised, weight) adds UDA's consistency term on them."""
    cfg, fc, tok = ctx.cfg, ctx.cfg.finetune, ctx.tokenizer
    texts, labels = data or (list(task.train["text"]), np.asarray(task.train["label"], np.int32))
    target = {"soft_labels": np.asarray(labels, np.float32)} if np.ndim(labels) == 2 else {
        "labels": np.asarray(labels, np.int32)}
    if fc.balance and np.ndim(labels) == 1:
        w = balanced_weights(labels, len(task.names))
        if not np.allclose(w, 1.0):  # imbalanced: every class weighs the same (a balanced set is left as is)
            target["weights"] = w
    ids = None
    if mode == "prompt":
        ids, wts = word_table(tok, model, verb, template)
        # Decoders: the shared prompt prefix is split off and runs once per batch.
        seqs, mpos, prefix = prompt_inputs(tok, model, template, texts, cfg.prompt.max_length)
        loss = objectives.make_cloze_loss(ids, wts, prefix)
        fields = {"mask_pos": mpos, **target}
    elif mode == "similarity":
        loss = objectives.make_similarity_loss(*verb.description_table(tok, template), cfg.prompt.similarity_scale)
        seqs = batching.encode(tok, texts, cfg.prompt.max_length)
        fields = {**target}
    else:
        if getattr(model, "classifier", None) is None:
            raise ConfigError("finetune.mode head needs a classification head; the model was built without one")
        loss = objectives.head_loss(fc.pooling)
        seqs = batching.encode(tok, texts, cfg.prompt.max_length)
        fields = {**target}
    bs = fc.batch_size
    batches = example_batches(ctx, model, seqs, fields, bs, task.seed + seed_offset, ids)
    if consistency is not None:
        loss, batches = with_consistency(ctx, model, mode, template, verb, loss, batches, consistency,
                                         task.seed + 29 + seed_offset)
    if mlm_weight > 0:
        lm_loss = objectives.clm_loss if is_decoder(model) else objectives.mlm_loss
        loss = objectives.joint_loss(loss, lm_loss, mlm_weight)
        batches = JointBatches(batches, mlm_batches(ctx, task, model, template, verb, bs, task.seed + 17 + seed_offset))
    model, peft_kw = with_peft(ctx, model, loss, steps, head_paths=("classifier",) if mode == "head" else (),
                               seed=train_seed(ctx, seed_offset))
    return model, batches, peft_kw


def with_consistency(ctx: RunContext, model, mode: str, template, verb, loss, batches, consistency, seed: int):
    """The loss and batches with the consistency term: the clean and noised views of the same
    texts, batched in the same order (keys ``cons/`` and ``cons/noised/``)."""
    cfg, tok = ctx.cfg, ctx.tokenizer
    clean, noised, weight = consistency
    if mode == "prompt":
        ids, wts = word_table(tok, model, verb, template)
        prefix = template.causal_prefix(tok) if is_decoder(model) else None
        class_logits = objectives.cloze_class_logits(ids, wts, prefix)
        encode = lambda t: prompt_inputs(tok, model, template, t, cfg.prompt.max_length)[:2]  # noqa: E731
    else:
        class_logits = (objectives.similarity_class_logits(*verb.description_table(tok, template),
                                                           cfg.prompt.similarity_scale) if mode == "similarity"
                        else objectives.head_class_logits(cfg.finetune.pooling))
        encode = lambda t: (batching.encode(tok, t, cfg.prompt.max_length), np.zeros(len(t), np.int32))  # noqa: E731
    pad, bs = tok.pad_token_id or 0, cfg.finetune.batch_size
    (cs, cp), (ns, npos) = encode(list(clean)), encode(list(noised))
    views = JointBatches(batching.ExampleBatches(cs, {"mask_pos": cp}, bs, seed, pad_id=pad),
                         batching.ExampleBatches(ns, {"mask_pos": npos}, bs, seed, pad_id=pad), prefix="noised")
    return objectives.consistency_loss(loss, class_logits, weight), JointBatches(batches, views, prefix="cons")


def train_classifier(ctx: RunContext, task: Task, model, mode: str, template: Template | None,
                     verb: Verbalizer | None, *, lr: float, steps: int, stage: str, mlm_weight: float = 0.0,
                     early_stop: bool = True, data: tuple[list[str], np.ndarray] | None = None,
                     seed_offset: int = 0, consistency: tuple[list[str], list[str], float] | None = None,
                     refit: bool = False) -> tuple[Any, dict]:
    """Fine-tune on the K-shot train split (or ``data``); returns the model at its best dev
    accuracy (ties: the earlier step) and a summary. ``refit``: dev is part of ``data`` (the final
    model of a held-out dev), so nothing is evaluated and the last step is kept."""
    cfg, fc = ctx.cfg, ctx.cfg.finetune
    model, batches, peft_kw = classifier_training(ctx, task, model, mode, template, verb, steps=steps,
                                                  mlm_weight=mlm_weight, data=data, seed_offset=seed_offset,
                                                  consistency=consistency)

    def on_dev(m) -> dict[str, float]:
        return dev_figures(ctx.classifier(mode, m, task, template, verb), task, cfg.eval.batch_size)

    res = fit(stage=stage, model=model, loss=peft_kw.pop("loss"), optim=dataclasses.replace(fc.optim, learning_rate=lr),
              steps=steps, batches=batches, batch_size=fc.batch_size, batch_key="finetune.batch_size", mesh=ctx.mesh,
              logger=ctx.logger, seed=train_seed(ctx, seed_offset), progress=cfg.logging.progress,
              log_every=max(1, steps // 10),
              fgm_epsilon=fc.fgm_epsilon, evaluate=None if refit else on_dev, eval_every=fc.eval_every,
              best_metric="dev_accuracy", best_mode="max", keep_best=not refit,
              early_stop_patience=fc.early_stop_patience if early_stop and not refit else 0,
              **peft_kw)
    best = res.best or {"step": 0, "dev_accuracy": -1.0, "dev_log_loss": None}
    s = res.summary
    return res.model, {"learning_rate": lr, "best_dev_accuracy": best["dev_accuracy"],
                       "best_dev_log_loss": best["dev_log_loss"], "best_step": best["step"],
                       "trainable_parameters": res.trainable_parameters, "steps_run": s["steps"],
                       "wall_time_s": s["wall_time_s"], "compile_s": s["compile_s"], "tokens_per_s": s["tokens_per_s"],
                       "stopped_early": s["stopped_early"]}


def dev_figures(clf, task: Task, batch_size: int) -> dict[str, float]:
    """A classifier's dev accuracy and log-loss, what grid points and self-training generations are chosen by."""
    res = evaluate(clf, task.dev, batch_size)
    return {"dev_accuracy": res["accuracy"], "dev_log_loss": res["log_loss"]}


def selection_key(summary: dict, rule: str = "accuracy") -> tuple[float, float]:
    """How a grid point ranks (higher is better): by dev accuracy, ties broken by the lower dev
    log-loss; or (``rule`` log_loss) by dev log-loss alone."""
    ll = summary.get("best_dev_log_loss")
    ll = float("inf") if ll is None else float(ll)
    return (-ll, 0.0) if rule == "log_loss" else (float(summary["best_dev_accuracy"]), -ll)


def grid_finetune(ctx: RunContext, task: Task, model, mode: str, template, verb, *, stage: str,
                  mlm_weight: float = 0.0, lrs: tuple[float, ...] | None = None, seed_offset: int = 0,
                  data: tuple[list[str], np.ndarray] | None = None, steps: int | None = None,
                  consistency: tuple[list[str], list[str], float] | None = None) -> tuple[Any, dict]:
    """LM-BFF protocol: fine-tune once per learning rate of the grid, keep the best on dev
    (``finetune.select``: dev accuracy with ties to the lower dev log-loss, or dev log-loss)."""
    cfg = ctx.cfg
    best, grid = None, []
    reusable = (mlm_weight == 0 and mode != "head" and "adapt" not in cfg.stage_list and seed_offset == 0
                and data is None and steps is None and consistency is None)
    for lr in lrs or cfg.finetune.lr_grid:
        hit = ctx.reuse.get((task.seed, lr)) if reusable else None
        if hit is not None:
            m, s_ = hit[0], {**hit[1], "reused": "backbone selection's screen (same split, recipe and lr)"}
        else:
            m, s_ = train_classifier(ctx, task, model, mode, template, verb, lr=lr, steps=steps or cfg.finetune.steps,
                                     stage=stage, mlm_weight=mlm_weight, seed_offset=seed_offset, data=data,
                                     consistency=consistency)
        if cfg.eval.grid_test and stage == "finetune":  # reporting only: how each selection rule would do
            s_ = {**s_, "test_accuracy": evaluate(ctx.classifier(mode, m, task, template, verb), task.test,
                                                  cfg.eval.batch_size, progress=ctx.bar(f"grid_test: lr {lr:g}"))["accuracy"]}
        grid.append(s_)
        if best is None or selection_key(s_, cfg.finetune.select) > selection_key(best[1], cfg.finetune.select):
            best = (m, s_)
    return best[0], {"mode": mode, "mlm_weight": mlm_weight, "fgm_epsilon": cfg.finetune.fgm_epsilon,
                     "select": cfg.finetune.select, "chosen": best[1], "grid": grid}


def refit(ctx: RunContext, task: Task, model, mode: str, template, verb, rep: dict, mlm_weight: float = 0.0
          ) -> tuple[Any, dict]:
    """The chosen grid point trained again on train + the held-out dev rows, for the steps it was
    best at (the final model of a run whose dev was held out of the user's rows)."""
    chosen = rep["chosen"]
    steps = int(chosen.get("best_step") or ctx.cfg.finetune.steps)
    data = task.all_labelled()
    m, s_ = train_classifier(ctx, task, model, mode, template, verb, lr=chosen["learning_rate"], steps=steps,
                             stage="finetune-refit", mlm_weight=mlm_weight, data=data, refit=True)
    return m, {**rep, "refit": {"rows": len(data[0]), "steps": steps, "learning_rate": chosen["learning_rate"],
                                "wall_time_s": s_["wall_time_s"]}}


def run(ctx: RunContext, state: SeedState) -> SeedState:
    if state.baseline_ft is not None:  # the prompt fine-tuning baseline was this very run
        model, rep = state.baseline_ft
    else:
        model, rep = grid_finetune(ctx, state.task, state.model, state.mode, state.template, state.verbalizer,
                                   stage="finetune", mlm_weight=ctx.cfg.finetune.mlm_weight)
    if state.task.dev_held_out and ctx.cfg.finetune.refit:
        model, rep = refit(ctx, state.task, state.model, state.mode, state.template, state.verbalizer, rep,
                           ctx.cfg.finetune.mlm_weight)
    return state.record("finetune", rep, model=model, finetune=rep["chosen"], classifier=None,
                        pretuned=state.model)
