"""Compile seconds against step seconds, in one run: MiniLM (configs/sentiment_mr.yaml) and
SmolLM2-135M LoRA (configs/sentiment_mr_decoder.yaml) train steps and inference, scanned layers
against unrolled ones, with a cold persistent compilation cache and a warm one; then the decoder
config's learning-rate grid, compiled the old way (unrolled, one compile per learning rate: each
grid point a new program, no persistent cache) against the new way (scanned, one compile serving
the whole grid).

    python scripts/bench_compile.py [--skip-minilm] [--json benchmarks/results/compile.json]

"Warm" is what a second process finds: the in-memory caches are dropped, so the program is traced
and lowered again and its executable read from the persistent cache. The last line is
``ratio <X>``: the old grid's cold compile seconds over the new grid's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time

import jax
import numpy as np

from autogpt_jax.config import load_config
from autogpt_jax.pipeline import make_context
from autogpt_jax.stages import task as task_stage
from autogpt_jax.stages.context import SeedState
from autogpt_jax.stages.finetune import classifier_training
from autogpt_jax.training import compilation, steps
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.steps import Trainer

CONFIGS = {"minilm": "configs/sentiment_mr.yaml", "smollm2": "configs/sentiment_mr_decoder.yaml"}
QUIET = ["--logging.progress", "false", "--logging.tensorboard", "false"]
STEADY = 3  # timed repeats after the compiling call


def forget_compiled():
    """Drop every in-memory compiled program (what a new process starts without)."""
    steps._STEPS.clear()
    jax.clear_caches()


def timed_first(fn):
    """(compile seconds, wall seconds) of a first call that compiles."""
    c, t = compilation.compile_seconds(), time.perf_counter()
    jax.block_until_ready(fn())
    return compilation.compile_seconds() - c, time.perf_counter() - t


def steady_ms(fn) -> float:
    times = []
    for _ in range(STEADY):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


class Case:
    """One backbone built by the pipeline (``model.scan_layers`` as given), its task on split seed
    42, and what its fine-tuning trains."""

    def __init__(self, name: str, scan: bool, work: str):
        self.ctx = make_context(load_config(["--config_path", CONFIGS[name], "--output_dir", tempfile.mkdtemp(dir=work),
                                             "--model.scan_layers", str(scan).lower(), *QUIET]))
        st = task_stage.run(self.ctx, SeedState(seed=42, model=self.ctx.backbone.model))
        self.state, self.cfg = st, self.ctx.cfg
        self.texts = list(st.task.test["text"])[:64]

    def trainer(self, lr: float):
        fc = self.cfg.finetune
        model, batches, kw = classifier_training(self.ctx, self.state.task, self.state.model, self.state.mode,
                                                 self.state.template, self.state.verbalizer, steps=fc.steps)
        optim = dataclasses.replace(fc.optim, learning_rate=lr)
        trainer, state = Trainer.create(model, kw.pop("loss"), optim, fc.steps, self.ctx.mesh, **kw)
        return trainer, state, shd.put_batch(next(batches), self.ctx.mesh)

    def train(self) -> dict:
        trainer, state, batch = self.trainer(self.cfg.finetune.lr_grid[0])
        box = [state]

        def step():
            box[0], m = trainer.train_step(box[0], batch, jax.random.key(0))
            return m

        compile_s, _ = timed_first(step)
        return {"compile_s": round(compile_s, 2), "step_ms": round(steady_ms(step), 1)}

    def infer(self) -> dict:
        s = self.state
        clf = self.ctx.classifier(s.mode, s.model, s.task, s.template, s.verbalizer)
        bs = self.cfg.eval.batch_size
        compile_s, _ = timed_first(lambda: clf.logits(self.texts, bs))
        return {"compile_s": round(compile_s, 2), "batch_ms": round(steady_ms(lambda: clf.logits(self.texts, bs)) /
                                                                     max(1, -(-len(self.texts) // bs)), 1)}


def scan_table(name: str, work: str) -> dict:
    out = {}
    for scan in (False, True):
        case = Case(name, scan, work)
        row = {}
        for cache in ("cold", "warm"):
            if cache == "cold":
                compilation.enable_cache(True, tempfile.mkdtemp(dir=work))
            forget_compiled()
            row[f"train_{cache}"] = case.train()
            forget_compiled()
            row[f"infer_{cache}"] = case.infer()
        out["scanned" if scan else "unrolled"] = row
        print(json.dumps({name: {"scanned" if scan else "unrolled": row}}), flush=True)
        case.ctx.logger.close()
    return out


def grid(work: str) -> dict:
    """The decoder config's lr grid: compile seconds of its train steps, old way and new way."""
    res = {}
    for way, scan in (("old", False), ("new", True)):
        case = Case("smollm2", scan, work)
        compilation.enable_cache(way == "new", tempfile.mkdtemp(dir=work))
        forget_compiled()
        total, per_lr = 0.0, []
        for lr in case.cfg.finetune.lr_grid:
            if way == "old":  # every grid point its own program, compiled from nothing
                forget_compiled()
            trainer, state, batch = case.trainer(lr)
            c, _ = timed_first(lambda: trainer.train_step(state, batch, jax.random.key(0))[1])
            per_lr.append(round(c, 2))
            total += c
        res[way] = {"layers": "scanned" if scan else "unrolled", "lrs": list(case.cfg.finetune.lr_grid),
                    "compile_s_per_lr": per_lr, "compile_s": round(total, 2)}
        print(json.dumps({"grid": {way: res[way]}}), flush=True)
        case.ctx.logger.close()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--skip-tables", action="store_true", help="only the lr grid and the ratio")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    compilation.listen()
    t0 = time.perf_counter()
    out = {"date": time.strftime("%Y-%m-%d"), "command": "python scripts/bench_compile.py " + " ".join(argv or sys.argv[1:]),
           "devices": jax.device_count(), "platform": jax.devices()[0].platform}
    with tempfile.TemporaryDirectory() as work:
        if not args.skip_tables:
            for name in ([] if args.skip_minilm else ["minilm"]) + ["smollm2"]:
                out[name] = scan_table(name, work)
        out["grid"] = grid(work)
    out["ratio"] = round(out["grid"]["old"]["compile_s"] / max(out["grid"]["new"]["compile_s"], 1e-9), 2)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
    print(f"ratio {out['ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
