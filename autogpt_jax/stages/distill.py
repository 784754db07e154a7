"""Stage ``distill``: the task model (teacher: the ensemble, or self-training's last student)
soft-labels the whole unlabelled pool (cached per teacher and pool: the labels self-training
already computed with the same teacher are read back); a small student with a classification
head learns those labels and the K-shot examples' own (one-hot), keeping its best dev step. The
student is exported beside the teacher (export/student)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from autogpt_jax.data import batching
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
    cfg, dc, task, teacher = ctx.cfg, ctx.cfg.distill, state.task, state.classifier
    pool = pool_subset(task.pool, dc.max_unlabeled, task.seed)
    t0 = time.perf_counter()
    logits, cached = label_pool(teacher, pool, ctx.out / "cache" / "pool_labels", cfg.eval.batch_size,
                                progress="distill: the teacher labels the pool" if cfg.logging.progress else None)
    soft = soft_targets(logits, dc.temperature)
    label_s = time.perf_counter() - t0
    C = len(task.names)
    train_y = np.asarray(task.train["label"], np.int64)
    texts = pool + list(task.train["text"])
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

    res = fit(stage="distill", model=built.model, loss=loss, optim=dc.optim, steps=dc.steps, batches=batches,
              batch_size=dc.batch_size, batch_key="distill.batch_size", mesh=ctx.mesh, logger=ctx.logger,
              seed=cfg.seed, progress=cfg.logging.progress, log_every=max(1, dc.steps // 10),
              evaluate=lambda m: {"dev_accuracy": evaluate(classifier(m), task.dev, cfg.eval.batch_size)["accuracy"]},
              eval_every=dc.eval_every, best_metric="dev_accuracy", best_mode="max", keep_best=True)
    clf = classifier(res.model)
    best = res.best or {"step": 0, "dev_accuracy": -1.0}
    rep: dict[str, Any] = {"student": built.source, "pool": len(pool), "temperature": dc.temperature,
                           "teacher_labelling_s": round(label_s, 1), "labels_from_cache": cached,
                           "teacher": type(teacher).__name__, "best_step": best["step"],
                           "best_dev_accuracy": best["dev_accuracy"], "train_wall_time_s": res.summary["wall_time_s"]}
    rep["student_test"] = evaluate(clf, task.test, cfg.eval.batch_size, progress=ctx.bar("distill: student test"))
    rep["teacher_test"] = state.results.get("test") or evaluate(teacher, task.test, cfg.eval.batch_size,
                                                                progress=ctx.bar("distill: teacher test"))
    sample = list(task.test["text"])[:256]
    rep["student_sentences_per_s"] = sentences_per_s(clf, sample, cfg.eval.batch_size)
    rep["teacher_sentences_per_s"] = sentences_per_s(teacher, sample, cfg.eval.batch_size)
    rep["speedup"] = rep["student_sentences_per_s"] / rep["teacher_sentences_per_s"]
    return state.record("distill", rep, student=clf)
