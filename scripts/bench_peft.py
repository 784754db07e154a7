"""Parameter-efficient fine-tuning against full fine-tuning, on the same MR splits (K=16 per class,
LM-BFF split seeds, the fixed 2,000-review test set), MiniLM with the default prompt (similarity
scoring, fixed template and label words so that only the fine-tuning method varies).

For each method: test accuracy mean ± std over the seeds, trainable parameters, optimiser-state
bytes, train-step time (batch 8, after compilation) and the compiled step's memory (arguments +
outputs + temporaries, from XLA's memory analysis), plus wall time.

Also per seed: zero-shot accuracy of the same prompt (method ``zero_shot``, nothing trained). The
default method is picked by accuracy gained over zero-shot per trainable parameter, among the
methods that gain at all; the table marks it.

Step time is measured in its own pass (``--timing``), which should run alone on the machine; its
figures replace those taken during the accuracy runs.

    python scripts/bench_peft.py [--seeds 13,21,42,87,100] [--methods none,lora,...] [--steps 100]
    python scripts/bench_peft.py --timing --results R.jsonl; python scripts/bench_peft.py --report R.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from autogpt_jax.config import load_config
from autogpt_jax.data import batching
from autogpt_jax.data.task import prepare_task
from autogpt_jax.evaluation import evaluate
from autogpt_jax.pipeline import make_context
from autogpt_jax.prompts.templates import Template, Verbalizer
from autogpt_jax.stages.finetune import train_classifier, with_peft
from autogpt_jax.training import objectives
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.steps import Trainer

# Learning rate per method: full fine-tuning uses the default config's best; the PEFT methods train
# few, freshly initialised parameters and want larger steps (PEFT-library / paper defaults).
LEARNING_RATES = {"none": 2e-5, "lora": 5e-4, "adalora": 5e-4, "adapter": 5e-4, "prefix": 5e-3, "prompt": 3e-2,
                  "bitfit": 5e-4}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="13,21,42,87,100")
    ap.add_argument("--methods", default="zero_shot,none,lora,adalora,adapter,prefix,prompt,bitfit")
    ap.add_argument("--timing", action="store_true", help="only the step-time / memory pass (run it alone)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--results", help="append each (seed, method) result to this JSON Lines file")
    ap.add_argument("--report", nargs="+", metavar="JSONL", help="print the table from earlier result files")
    args = ap.parse_args()
    if args.report:
        return print_table([json.loads(l) for f in args.report for l in open(f) if l.strip()])
    logging.disable(logging.WARNING)
    work = Path(tempfile.mkdtemp())
    common = ["--config_path", "configs/sentiment_mr.yaml", "--output_dir", str(work), "--logging.progress", "false",
              "--logging.tensorboard", "false", "--finetune.steps", str(args.steps)]
    # eval.compare off: the backbone is built without a classification head (nothing here uses one).
    ctx = make_context(load_config([*common, "--eval.compare", "false"]))
    base = ctx.backbone.model
    template, verb = Template("{text} It was {mask}."), Verbalizer((("terrible",), ("great",)))
    rows, stats_by_method = [], {}
    methods = args.methods.split(",")
    if args.timing:
        task = prepare_task(ctx.cfg, 13)
        for method in [m for m in methods if m != "zero_shot"]:
            mctx = dataclasses.replace(ctx, cfg=load_config([*common, "--peft.method", method]))
            row = {"timing_only": True, "method": method, **step_stats(mctx, task, base, template, verb, method)}
            print(json.dumps(row), flush=True)
            if args.results:
                with open(args.results, "a") as f:
                    f.write(json.dumps(row) + "\n")
        ctx.logger.close()
        return
    for seed in [int(s) for s in args.seeds.split(",")]:
        task = prepare_task(ctx.cfg, seed)
        for method in methods:
            if method == "zero_shot":
                t0 = time.perf_counter()
                acc = evaluate(ctx.classifier("similarity", base, task, template, verb), task.test, 64)["accuracy"]
                row = {"seed": seed, "method": method, "accuracy": acc, "wall_s": time.perf_counter() - t0}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.results:
                    with open(args.results, "a") as f:
                        f.write(json.dumps(row) + "\n")
                continue
            mctx = dataclasses.replace(ctx, cfg=load_config([*common, "--peft.method", method]))
            t0 = time.perf_counter()
            model, s = train_classifier(mctx, task, base, "similarity", template, verb, lr=LEARNING_RATES[method],
                                        steps=args.steps, stage=f"peft-{method}")
            acc = evaluate(mctx.classifier("similarity", model, task, template, verb), task.test, 64)["accuracy"]
            # Speed and memory do not depend on the split: measured on the first seed only.
            stats = stats_by_method.get(method) or step_stats(mctx, task, base, template, verb, method)
            stats_by_method[method] = stats
            row = {"seed": seed, "method": method, "accuracy": acc, "wall_s": time.perf_counter() - t0,
                   "learning_rate": LEARNING_RATES[method], **stats}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.results:
                with open(args.results, "a") as f:
                    f.write(json.dumps(row) + "\n")
    ctx.logger.close()
    shutil.rmtree(work, ignore_errors=True)
    print_table(rows)


def step_stats(ctx, task, base, template, verb, method, n_steps: int = 10) -> dict:
    """Trainable parameters, optimiser bytes, mean step time and the compiled step's memory."""
    cfg, tok = ctx.cfg, ctx.tokenizer
    loss = objectives.make_similarity_loss(*verb.description_table(tok, template), cfg.prompt.similarity_scale)
    model, kw = with_peft(ctx, base, loss, n_steps, head_paths=())
    trainer, state = Trainer.create(model, kw.pop("loss"), cfg.finetune.optim, n_steps, ctx.mesh, **kw)
    seqs = batching.encode(tok, list(task.train["text"]), cfg.prompt.max_length)
    batches = batching.ExampleBatches(seqs, {"labels": np.asarray(task.train["label"], np.int32)},
                                      cfg.finetune.batch_size, 0, pad_id=tok.pad_token_id or 0)
    batch = shd.put_batch(next(batches), ctx.mesh)
    mem = trainer.memory_analysis(state, batch, jax.random.key(0))
    state, m = trainer.train_step(state, batch, jax.random.key(0))
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(n_steps):
        state, m = trainer.train_step(state, batch, jax.random.key(0))
    jax.block_until_ready(m)
    step_ms = 1000 * (time.perf_counter() - t) / n_steps
    trainable = int(sum(x.size for x in jax.tree.leaves(state.params)))
    opt_bytes = int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.opt_state)))
    peak = None
    if mem is not None:
        peak = int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                   - getattr(mem, "alias_size_in_bytes", 0))
    return {"trainable": trainable, "optimizer_bytes": opt_bytes, "step_ms": step_ms, "step_memory_bytes": peak}


def pick_default(rows: list[dict]) -> str | None:
    """The method with the largest mean accuracy gain over zero-shot per trainable parameter, among
    the methods that gain at all (needs ``zero_shot`` rows)."""
    zs = {r["seed"]: r["accuracy"] for r in rows if r["method"] == "zero_shot"}
    best, best_rate = None, 0.0
    for m in dict.fromkeys(r["method"] for r in rows if r["method"] != "zero_shot" and "seed" in r):
        rs = [r for r in rows if r["method"] == m and r.get("seed") in zs]
        if not rs:
            continue
        gain = float(np.mean([r["accuracy"] - zs[r["seed"]] for r in rs]))
        rate = gain / rs[0]["trainable"]
        if gain > 0 and rate > best_rate:
            best, best_rate = m, rate
    return best


def print_table(rows: list[dict]):
    timing = {r["method"]: r for r in rows if r.get("timing_only")}
    rows = [r for r in rows if not r.get("timing_only")]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    zs = {r["seed"]: r["accuracy"] for r in rows if r["method"] == "zero_shot"}
    pick = pick_default(rows)
    print(f"\nMR, K=16, seeds {seeds}, 2,000 test reviews; MiniLM, similarity prompt, {len(seeds)} seed(s)"
          + ("; step ms and memory from the separate --timing pass" if timing else ""))
    print(f"  {'method':<9} {'accuracy %':>13} {'gain':>6} {'trainable':>11} {'optimiser MB':>13} {'step ms':>8} "
          f"{'step memory MB':>15} {'lr':>7} {'wall s':>7}")
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        a = 100 * np.asarray([r["accuracy"] for r in rs])
        gain = np.mean([100 * (r["accuracy"] - zs[r["seed"]]) for r in rs if r["seed"] in zs]) if zs else float("nan")
        if m == "zero_shot":
            print(f"  {m:<9} {a.mean():6.1f} ± {a.std():4.1f} {'':>6} {0:>11,} {'':>13} {'':>8} {'':>15} {'':>7} "
                  f"{sum(r['wall_s'] for r in rs):>7.0f}")
            continue
        st = timing.get(m, rs[0])
        mem = st.get("step_memory_bytes") or float("nan")
        print(f"  {m:<9} {a.mean():6.1f} ± {a.std():4.1f} {gain:>+6.1f} {rs[0]['trainable']:>11,} "
              f"{rs[0]['optimizer_bytes'] / 2**20:>13.2f} {st['step_ms']:>8.0f} {mem / 2**20:>15.1f} "
              f"{rs[0]['learning_rate']:>7.0e} {sum(r['wall_s'] for r in rs):>7.0f}" + ("   <- default" if m == pick else ""))
    if pick:
        print(f"  default: {pick} (largest accuracy gain over zero-shot per trainable parameter)")


if __name__ == "__main__":
    main()
