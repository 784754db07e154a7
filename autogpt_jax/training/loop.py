"""The shared training loop: progress, metrics, periodic evaluation, checkpoints, early stopping.

The loop never blocks on the device in the hot path: step N is dispatched before step N-1's
metrics are read. It blocks only at save steps, to check the loss is finite before writing, so a
checkpoint never holds a diverged state.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from autogpt_jax.config import LoggingConfig
from autogpt_jax.errors import AutoGPTJaxError, TrainingDivergedError
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.checkpoint import StageCheckpointer
from autogpt_jax.training.compilation import compile_seconds
from autogpt_jax.training.steps import TrainState, Trainer

log = logging.getLogger(__name__)


def is_main() -> bool:
    return jax.process_index() == 0


class MetricsLogger:
    """metrics.jsonl (append-only, resumable) + TensorBoard (tb/) + optional W&B; process 0 only."""

    def __init__(self, output_dir: str | Path, cfg: LoggingConfig, run_config: dict | None = None):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = is_main()
        self.tb = None
        self.wandb = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if cfg.tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(Path(output_dir) / "tb"))
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                raise AutoGPTJaxError("logging.wandb is true but wandb is not installed: pip install wandb") from None
            self.wandb = wandb.init(project=cfg.wandb_project, config=run_config, dir=str(output_dir))

    def truncate(self, stage: str, after_step: int):
        """Drop this stage's records beyond ``after_step`` (written before a crash, redone on resume)."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by the crash
            if rec.get("stage") == stage and rec.get("step", 0) > after_step:
                continue
            keep.append(line)
        self.path.write_text("".join(l + "\n" for l in keep))

    def log(self, stage: str, step: int, metrics: dict[str, float]):
        if not self.enabled:
            return
        rec = {"stage": stage, "step": step, "time": round(time.time(), 3), **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{stage}/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"{stage}/{k}": v for k, v in metrics.items()}, step=step)

    def close(self):
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _host(metrics: dict) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


def _check_finite(stage: str, step: int, m: dict[str, float], ckpt: StageCheckpointer | None):
    bad = [k for k in ("loss", "grad_norm") if k in m and not math.isfinite(m[k])]
    if bad:
        last = ckpt.all_steps()[-1] if ckpt is not None and ckpt.all_steps() else None
        where = f"the last good checkpoint is step {last} in {ckpt.directory}" if last is not None else \
            "no checkpoint was written before it"
        raise TrainingDivergedError(
            f"{stage}: {' and '.join(bad)} became {m[bad[0]]} at step {step}; stopping. {where}. "
            "Lower the learning rate, raise warmup, or check the data of this step.")


def train_loop(
    *,
    stage: str,
    trainer: Trainer,
    state: TrainState,
    batches: Any,  # iterator of host batches with state()/restore()
    total_steps: int,
    rng: jax.Array,
    logger: MetricsLogger,
    ckpt: StageCheckpointer | None = None,
    save_every: int = 100,
    log_every: int = 10,
    eval_fn: Callable[[TrainState], dict[str, float]] | None = None,
    eval_every: int = 0,
    early_stop_patience: int = 0,
    best_metric: str = "eval_loss",
    best_mode: str = "min",
    tokens_key: str = "attention_mask",
    extra: dict[str, Any] | None = None,
    progress: bool = True,
    start_step: int = 0,
) -> tuple[TrainState, dict[str, Any]]:
    """Run ``total_steps`` updates (from ``start_step``). Returns the final state and a summary."""
    from tqdm.auto import tqdm

    mesh = trainer.mesh
    bar = tqdm(total=total_steps, initial=start_step, desc=stage, disable=not (progress and is_main()),
               dynamic_ncols=True, unit="step")
    c0 = compile_seconds()
    pending: tuple[int, dict, int] | None = None  # (step, device metrics, tokens) of the last dispatch
    t0 = time.perf_counter()
    t_window, tok_window = time.perf_counter(), 0
    tokens_total = 0
    best = None
    bad_evals = 0
    last_metrics: dict[str, float] = {}
    evals: list[dict[str, float]] = []
    stopped_early = False

    def drain(p):
        nonlocal t_window, tok_window, last_metrics
        step, dev_metrics, toks = p
        m = _host(dev_metrics)
        tok_window += toks
        _check_finite(stage, step, m, ckpt)
        last_metrics = m
        if step % log_every == 0 or step == total_steps:
            now = time.perf_counter()
            m["tokens_per_s"] = tok_window / max(now - t_window, 1e-9)
            t_window, tok_window = now, 0
            logger.log(stage, step, {k: v for k, v in m.items() if not k.endswith(("_sum", "_count", "_correct"))
                                     and k not in ("count", "correct")})
            bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{m['tokens_per_s']:,.0f}",
                            compile=f"{compile_seconds() - c0:.0f}s")
        return m

    step = start_step
    if eval_fn is not None and eval_every and start_step == 0:
        # The starting point, so the report and the curves show how far training moved the loss.
        initial = eval_fn(state)
        evals.append({"step": 0, **initial})
        logger.log(stage, 0, initial)
    try:
        while step < total_steps:
            host_batch = next(batches)
            toks = int(np.asarray(host_batch[tokens_key]).sum())
            batch = shd.put_batch(host_batch, mesh)
            state, dev_metrics = trainer.train_step(state, batch, rng)  # dispatch step N ...
            step += 1
            tokens_total += toks
            if pending is not None:
                drain(pending)  # ... then read step N-1
            pending = (step, dev_metrics, toks)
            bar.update(1)
            do_eval = eval_fn is not None and eval_every and (step % eval_every == 0 or step == total_steps)
            do_save = ckpt is not None and (step % save_every == 0 or step == total_steps or do_eval)
            if not (do_eval or do_save):
                continue
            drain(pending)  # blocks: the state must be known-finite before it is evaluated or saved
            pending = None
            eval_metrics = None
            if do_eval:
                eval_metrics = eval_fn(state)
                evals.append({"step": step, **eval_metrics})
                logger.log(stage, step, eval_metrics)
                score = eval_metrics.get(best_metric)
                if score is not None:
                    if best is None or (score < best if best_mode == "min" else score > best):
                        best, bad_evals = score, 0
                    else:
                        bad_evals += 1
            if do_save:
                ckpt.save(step, state, {"data": batches.state(), "stage": stage, **(extra or {})}, eval_metrics)
            if early_stop_patience and bad_evals >= early_stop_patience:
                log.warning("%s: no improvement in %s for %d evaluations; stopping early at step %d",
                            stage, best_metric, bad_evals, step)
                stopped_early = True
                break
        if pending is not None:
            drain(pending)
    finally:
        # However the loop ends (done, NaN, Ctrl-C), in-flight async saves finish: no checkpoint is lost.
        bar.close()
        if ckpt is not None:
            ckpt.wait()
    wall = time.perf_counter() - t0
    compiling = compile_seconds() - c0
    done = step - start_step
    summary = {
        "steps": step, "steps_this_run": done, "wall_time_s": round(wall, 2),
        # Of the wall time: compiling (train and eval steps, the evaluation's programs) and the rest.
        "compile_s": round(compiling, 2), "run_s": round(wall - compiling, 2),
        "tokens_per_s": round(tokens_total / wall, 1) if wall > 0 else None,
        "final_loss": last_metrics.get("loss"), "best": {best_metric: best} if best is not None else None,
        "evals": evals, "stopped_early": stopped_early,
    }
    return state, summary
