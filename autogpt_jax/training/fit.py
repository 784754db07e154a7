"""The one ``fit()``: every stage that trains (pretraining, adaptation, fine-tuning, template
search, distillation, the retriever) goes through it.

It checks the batch size against the mesh, builds the trainer, resumes from the stage's
checkpoint when the config that wrote it is today's (its fingerprint), runs the loop, and keeps
the best-on-dev parameters when asked.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from autogpt_jax.config import CheckpointConfig, OptimConfig
from autogpt_jax.errors import ConfigError
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.checkpoint import StageCheckpointer, has_checkpoints
from autogpt_jax.training.loop import MetricsLogger, is_main, train_loop
from autogpt_jax.training.steps import Trainer

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """Where a stage checkpoints, and the fingerprint of what it depends on: the config keys it
    reads and the fingerprints of the stages before it. A checkpoint is resumed from only when
    its fingerprint equals today's."""

    directory: Path
    cfg: CheckpointConfig
    fingerprint: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Fit:
    model: nnx.Module  # the best-on-dev step's (with ``keep_best``), else the last step's
    summary: dict[str, Any]  # train_loop's summary (steps, wall time, tokens/s, evals, ...)
    best: dict[str, Any] | None  # {"step", **metrics} of the kept step (``keep_best``)
    start_step: int  # the step resumed from (0: trained from the start)
    trainable_parameters: int
    stale: list[str] | None = None  # the keys whose change made a checkpoint stale, when one was


def check_batch_size(batch_size: int, mesh, key: str):
    n = shd.batch_divisor(mesh)
    if batch_size % n:
        raise ConfigError(f"{key} {batch_size} must be divisible by the data×fsdp mesh size {n}")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def changed_keys(old: dict | None, new: dict) -> list[str]:
    """The flattened keys whose values differ between two fingerprints (all of them when the old
    one is missing: a checkpoint written before fingerprints existed)."""
    if old is None:
        return ["(no fingerprint)"]
    a, b = _flat(json.loads(json.dumps(old))), _flat(json.loads(json.dumps(new)))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))


def _sync(name: str):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _open_checkpoints(stage: str, ck: Checkpointing) -> tuple[StageCheckpointer, list[str] | None]:
    """The stage's checkpointer; a checkpoint written under another config is moved aside (to
    ``<dir>.stale``, never deleted) so that the stage trains again."""
    d, stale = ck.directory, None
    fp_path = d / FINGERPRINT_FILE
    if ck.cfg.resume and has_checkpoints(d):
        old = json.loads(fp_path.read_text()) if fp_path.is_file() else None
        changed = changed_keys(old, ck.fingerprint)
        if changed:
            stale = changed
            log.warning("%s: its checkpoint in %s was written under another config (changed: %s); training it again",
                        stage, d, ", ".join(changed))
            if is_main():
                aside = d.with_name(d.name + ".stale")
                shutil.rmtree(aside, ignore_errors=True)
                d.rename(aside)
            _sync(f"stale-{stage}")
    ckpt = StageCheckpointer(d, ck.cfg)
    if is_main():
        fp_path.write_text(json.dumps(ck.fingerprint, indent=1, sort_keys=True, default=str) + "\n")
    return ckpt, stale


def fit(*, stage: str, model: nnx.Module, loss: Callable, optim: OptimConfig, steps: int, batches: Any,
        batch_size: int, batch_key: str, mesh, logger: MetricsLogger, seed: int, progress: bool, log_every: int,
        trainable: Any = nnx.Param, frozen_dtype=None, hook: Callable | None = None, fgm_epsilon: float = 0.0,
        checkpoint: Checkpointing | None = None,
        evaluate: Callable[[nnx.Module], dict[str, float]] | None = None, eval_every: int = 0,
        held_out: list[dict] | None = None, held_out_key: str = "mlm",
        best_metric: str = "eval_loss", best_mode: str = "min", keep_best: bool = False,
        early_stop_patience: int = 0, tokens_key: str = "attention_mask", extra: dict | None = None) -> Fit:
    """Train ``model`` for ``steps`` updates of ``loss`` on ``batches``.

    ``evaluate(model) -> metrics`` runs every ``eval_every`` steps (and at step 0), and so does
    the loss on the ``held_out`` batches (device batches; ``eval_loss`` and ``eval_perplexity``
    from the loss's ``<held_out_key>_loss_sum`` / ``_count``); with
    ``keep_best`` the returned model is the step with the highest ``best_metric`` (ties go to the
    later step; step 0, the untrained model, is never a candidate: with K-shot dev sets accuracy
    moves in steps of 1/|dev| and early ties are common). ``checkpoint``: save every
    ``checkpoint.cfg.every`` steps and, with ``checkpoint.cfg.resume``, resume from the newest
    checkpoint of the same fingerprint.
    """
    check_batch_size(batch_size, mesh, batch_key)
    trainer, state = Trainer.create(model, loss, optim, steps, mesh, trainable=trainable, fgm_epsilon=fgm_epsilon,
                                    hook=hook, frozen_dtype=frozen_dtype)
    ckpt, stale, start = None, None, 0
    if checkpoint is not None:
        ckpt, stale = _open_checkpoints(stage, checkpoint)
        if checkpoint.cfg.resume:
            restored = ckpt.restore_latest(state)
            if restored is not None:
                state, saved, start = restored
                batches.restore(saved["data"])
                logger.truncate(stage, start)
                log.warning("%s: resumed from step %d (%s)", stage, start, ckpt.directory)
    best: dict[str, Any] = {"score": None, "params": None, "frozen": None, "metrics": None, "step": 0}

    def held_out_loss(st) -> dict[str, float]:
        tot = cnt = 0.0
        for b in held_out:
            m = jax.device_get(trainer.eval_step(st, b))
            tot += float(m[f"{held_out_key}_loss_sum"])
            cnt += float(m[f"{held_out_key}_count"])
        loss_ = tot / max(cnt, 1.0)
        return {"eval_loss": loss_, "eval_perplexity": float(np.exp(min(loss_, 50.0)))}

    def eval_fn(st):
        metrics = {**(held_out_loss(st) if held_out else {}), **(evaluate(trainer.model(st)) if evaluate else {})}
        score = metrics.get(best_metric)
        if keep_best and int(st.step) > 0 and score is not None and (best["score"] is None or score >= best["score"]):
            best.update(score=score, metrics=metrics, step=int(st.step),
                        params=jax.tree.map(lambda x: x.copy(), st.params),
                        frozen=jax.tree.map(lambda x: x.copy(), st.frozen) if trainer.hook else None)
        return metrics

    try:
        state, summary = train_loop(
            stage=stage, trainer=trainer, state=state, batches=batches, total_steps=steps, rng=jax.random.key(seed),
            logger=logger, ckpt=ckpt, save_every=checkpoint.cfg.every if checkpoint else 100, log_every=log_every,
            eval_fn=eval_fn if evaluate is not None or held_out else None, eval_every=eval_every,
            early_stop_patience=early_stop_patience, best_metric=best_metric, best_mode=best_mode,
            tokens_key=tokens_key, extra=extra, progress=progress, start_step=start)
    finally:
        if ckpt is not None:
            ckpt.close()
    n_trainable = int(sum(x.size for x in jax.tree.leaves(state.params)))
    if keep_best and best["params"] is not None:
        out = nnx.merge(trainer.graphdef, best["params"], best["frozen"] or state.frozen)
        kept = {"step": best["step"], **best["metrics"]}
    else:
        out, kept = trainer.model(state), None
    return Fit(out, summary, kept, start, n_trainable, stale)
