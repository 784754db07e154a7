"""The decoder recipe's training step against the number of classes: SmolLM2 with its LoRA, its
first rule template ("Which of these fits the text: A, B or C?", the label list in the shared
prefix) and the class names as label words (multi-token names scored by their whole likelihood),
on BANKING77 intents (2, 10, 20, 40, 77 of them). Prints the step time (batch 8, after
compilation) and its ratio to 2 classes, per class count.

    python scripts/bench_classes.py [--classes 2,10,20,77] [--steps 5]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from autogpt_jax.config import load_config
from autogpt_jax.data import batching, sources
from autogpt_jax.data.task import prepare_task
from autogpt_jax.inference import prompt_inputs
from autogpt_jax.pipeline import make_context
from autogpt_jax.prompts.templates import Template, rule_prompts
from autogpt_jax.selection import recipe_path
from autogpt_jax.stages.finetune import classifier_training
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.steps import Trainer


def write_train(path: Path, n_classes: int, per_class: int = 8):
    ds = sources.load_dataset("banking77")["train"]
    names = ds.features["label"].names[:n_classes]
    rows = [(t, names[l]) for t, l in zip(ds["text"], ds["label"]) if l < n_classes]
    kept, count = [], {}
    for t, n in rows:
        if count.get(n, 0) < per_class:
            kept.append((t, n))
            count[n] = count.get(n, 0) + 1
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("text", "label"))
        w.writerows(kept)


def _read_rows(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)]


def step_time(n_classes: int, n_steps: int, work: Path) -> dict:
    train = work / f"train{n_classes}.csv"
    write_train(train, n_classes)
    cfg = load_config(["--config_path", recipe_path("decoder"), "--data.train_file", str(train),
                       "--output_dir", str(work / f"run{n_classes}"), "--logging.progress", "false",
                       "--logging.tensorboard", "false", "--stages", "finetune"])
    ctx = make_context(cfg)
    task = prepare_task(cfg, 42)
    templates, verb = rule_prompts(None, task.names, decoder=True, chat=True)
    model, _, kw = classifier_training(ctx, task, ctx.backbone.model, "prompt", Template(templates[0]), verb,
                                             steps=n_steps + 1)
    trainer, state = Trainer.create(model, kw.pop("loss"), cfg.finetune.optim, n_steps + 1, ctx.mesh, **kw)
    # the same eight texts at every class count (the loader's batches differ in length)
    texts = [t for t, _ in _read_rows(work / "train2.csv")][:8] if (work / "train2.csv").exists() else list(
        task.train["text"])[:8]
    seqs, mpos, _ = prompt_inputs(ctx.tokenizer, model, Template(templates[0]), texts, cfg.prompt.max_length)
    ids, mask = batching.pad_batch(seqs, ctx.tokenizer.pad_token_id or 0)
    batch = shd.put_batch({"input_ids": ids, "attention_mask": mask, "mask_pos": np.asarray(mpos, np.int32),
                           "labels": np.arange(len(texts), dtype=np.int32) % n_classes}, ctx.mesh)
    t = time.perf_counter()
    state, m = trainer.train_step(state, batch, jax.random.key(0))
    jax.block_until_ready(m)
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n_steps):
        state, m = trainer.train_step(state, batch, jax.random.key(0))
    jax.block_until_ready(m)
    ctx.logger.close()
    return {"classes": n_classes, "step_s": (time.perf_counter() - t) / n_steps, "first_step_s": first,
            "batch": int(batch["input_ids"].shape[0]), "tokens": int(batch["input_ids"].shape[1])}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", default="2,10,20,77")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    work = Path(tempfile.mkdtemp())
    rows = [step_time(int(c), args.steps, work) for c in args.classes.split(",")]
    base = rows[0]["step_s"]
    for r in rows:
        r["ratio_to_first"] = r["step_s"] / base
        print(json.dumps(r), flush=True)
    print(f"{'classes':>8} {'step s':>8} {'× ' + str(rows[0]['classes']) + ' classes':>14}")
    for r in rows:
        print(f"{r['classes']:>8} {r['step_s']:>8.2f} {r['ratio_to_first']:>14.2f}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
