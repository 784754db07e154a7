"""Stage ``distill``: the teacher (``distill.teacher``: the prompt ensemble when the run built one,
even after self-training replaced the task model; else the task model) soft-labels the whole
unlabelled pool (cached per teacher and pool: the labels self-training already computed with the
same teacher are read back); a small student with a classification
head learns those labels and the K-shot examples' own (one-hot). The step kept (``distill.select``)
is the one that agrees most with the teacher on pool texts held out from the student's training,
or the best dev step, or the last. The student is exported beside the teacher (export/student)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from autogpt_jax.data import batching
from autogpt_jax.data.task import Task
from autogpt_jax.errors import ConfigError
from autogpt_jax.evaluation import evaluate, sentences_per_s
from autogpt_jax.inference import Classifier
from autogpt_jax.models.build import build_model
from autogpt_jax.pseudolabels import label_pool, pool_subset, soft_targets
from autogpt_jax.stages.context import RunContext, SeedState, ensure_classifier
from autogpt_jax.training import objectives
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.fit import fit


def run(ctx: RunContext, state: SeedState) -> SeedState:
    state = ensure_classifier(ctx, state)
    cfg, task = ctx.cfg, state.task
    teacher, source = teacher_of(state, cfg.distill.teacher)
    pool = pool_subset(task.pool, cfg.distill.max_unlabeled, task.seed)
    t0 = time.perf_counter()
    logits, cached = label_pool(teacher, pool, ctx.out / "cache" / "pool_labels", cfg.eval.batch_size,
                                progress=ctx.bar("distill: the teacher labels the pool"))
    label_s = time.perf_counter() - t0
    clf, rep = train_student(ctx, task, pool, logits)
    rep.update(teacher_labelling_s=round(label_s, 1), labels_from_cache=cached, teacher=type(teacher).__name__,
               teacher_source=source)
    known = state.results.get("test") if teacher is state.classifier else None
    rep["teacher_test"] = known or evaluate(teacher, task.test, cfg.eval.batch_size,
                                            progress=ctx.bar("distill: teacher test"))
    sample = list(task.test["text"])[:256]
    rep["student_sentences_per_s"] = sentences_per_s(clf, sample, cfg.eval.batch_size)
    rep["teacher_sentences_per_s"] = sentences_per_s(teacher, sample, cfg.eval.batch_size)
    rep["speedup"] = rep["student_sentences_per_s"] / rep["teacher_sentences_per_s"]
    return state.record("distill", rep, student=clf)


def train_student(ctx: RunContext, task: Task, pool: list[str], logits: np.ndarray) -> tuple[Classifier, dict[str, Any]]:
    """The student (``distill``'s settings) trained on the teacher's ``logits`` over ``pool`` and the
    K-shot examples, the step kept by ``distill.select``, and its report with its test accuracy."""
    cfg, dc = ctx.cfg, ctx.cfg.distill
    if len(logits) != len(pool):
        raise ConfigError(f"distill: {len(logits)} teacher labels for {len(pool)} pool texts")
    held = held_out(len(pool), dc.holdout if dc.select == "agreement" else 0, task.seed)
    train_rows = np.setdiff1d(np.arange(len(pool)), held)
    hold_texts, hold_y = [pool[i] for i in held], logits[held].argmax(-1)
    soft = soft_targets(logits[train_rows], dc.temperature)
    C = len(task.names)
    train_y = np.asarray(task.train["label"], np.int64)
    texts = [pool[i] for i in train_rows] + list(task.train["text"])
    targets = np.concatenate([soft, np.eye(C, dtype=np.float32)[train_y]]).astype(np.float32)
    student_cfg = dataclasses.replace(cfg.model, name_or_path=dc.student, tokenizer=None, dropout=None)
    built = build_model(student_cfg, seed=cfg.seed, num_labels=C,
                        sharding=lambda var: shd.variable_sharding(var, ctx.mesh))
    if getattr(built.model, "classifier", None) is None:
        raise ConfigError(f"distill.student {dc.student!r} is not a BERT-family encoder with a classification head")
    stok = built.tokenizer
    seqs = batching.encode(stok, texts, dc.max_length)
    batches = batching.ExampleBatches(seqs, {"soft_labels": targets}, dc.batch_size, task.seed,
                                      pad_id=stok.pad_token_id or 0)
    loss = lambda m, b, r=None: objectives.distill_loss(m, b, r, pooling=dc.pooling)  # noqa: E731

    def classifier(m) -> Classifier:
        return Classifier(m, stok, task.names, "head", max_length=dc.max_length, pooling=dc.pooling, mesh=ctx.mesh)

    bs = cfg.eval.batch_size

    def metrics(m) -> dict[str, float]:
        c = classifier(m)
        out = {"dev_accuracy": evaluate(c, task.dev, bs)["accuracy"]}
        if len(held):
            out["teacher_agreement"] = float(np.mean(c.logits(hold_texts, bs).argmax(-1) == hold_y))
        if cfg.eval.grid_test:  # reporting only (benchmarks): how each selection rule does on test
            out["test_accuracy"] = evaluate(c, task.test, bs)["accuracy"]
        return out

    key = {"agreement": "teacher_agreement", "dev": "dev_accuracy", "last": None}[dc.select]
    res = fit(stage="distill", model=built.model, loss=loss, optim=dc.optim, steps=dc.steps, batches=batches,
              batch_size=dc.batch_size, batch_key="distill.batch_size", mesh=ctx.mesh, logger=ctx.logger,
              seed=cfg.seed, progress=cfg.logging.progress, log_every=max(1, dc.steps // 10),
              evaluate=metrics, eval_every=dc.eval_every, best_metric=key or "dev_accuracy", best_mode="max",
              keep_best=key is not None)
    clf = classifier(res.model)
    evals = res.summary.get("evals", [])
    best = res.best or next((e for e in reversed(evals) if e["step"] == dc.steps), {"step": dc.steps})
    rep: dict[str, Any] = {"student": built.source, "pool": len(pool), "held_out": len(held),
                           "temperature": dc.temperature, "select": dc.select, "best_step": best["step"],
                           "best_dev_accuracy": best.get("dev_accuracy"),
                           "best_teacher_agreement": best.get("teacher_agreement"),
                           "evals": evals, "train_wall_time_s": res.summary["wall_time_s"]}
    rep["student_test"] = evaluate(clf, task.test, bs, progress=ctx.bar("distill: student test"))
    return clf, rep


def teacher_of(state: SeedState, choice: str) -> tuple[Classifier, str]:
    """The classifier that labels the pool for ``distill.teacher`` = ``choice``, and which it is."""
    if choice == "ensemble" and state.ensemble is not None:
        return state.ensemble, "ensemble"
    return state.classifier, "task model"


def held_out(n: int, holdout: int, seed: int) -> np.ndarray:
    """Pool rows the student does not train on (at most a fifth of the pool), sorted."""
    k = min(holdout, n // 5)
    return np.sort(np.random.default_rng([seed, 19]).permutation(n)[:k]) if k > 0 else np.zeros(0, np.int64)
