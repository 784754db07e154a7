"""The distilled student alone, from the pool labels a run's teacher already wrote: the distill
stage's student (its `distill.*` settings, one variant per `--variant`) is trained on the teacher's
cached logits (<output_dir>/cache/pool_labels/logits-<teacher>-<pool>.npy) and the K-shot examples,
and its test accuracy printed, so that the student's settings can be compared without labelling
the pool again (the decoder ensemble takes about 35 min for MR's 10,688 pool reviews here).

    python scripts/bench_student.py --labels RUN/cache/pool_labels --seed-file \
        benchmarks/results/issue19_decoder_mr_seed100.json \
        --variant "" --variant "--distill.steps 1200" --variant "--distill.temperature 2"

The config is the seed file's (the ladder run that wrote the labels), or `--config ARGS`. Writes
benchmarks/results/issue19_student_<task>_seed<seed>.json (or --out) with every variant's test
accuracy, kept step, test accuracy per eval step and wall time, and the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from autogpt_jax.config import load_config
from autogpt_jax.data.task import prepare_task
from autogpt_jax.pipeline import make_context
from autogpt_jax.pseudolabels import pool_subset, texts_hash
from autogpt_jax.stages.distill import train_student


def labels_file(where: Path, pool: list[str]) -> Path:
    """The logits file of ``pool`` in a pool-label cache directory (or ``where`` itself)."""
    if where.is_file():
        return where
    found = sorted(where.glob(f"logits-*-{texts_hash(pool)}.npy"))
    if len(found) != 1:
        raise SystemExit(f"--labels {where}: {len(found)} logits files of the distill pool "
                         f"({len(pool)} texts) there; name one file")
    return found[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", required=True, help="a pool-label cache directory or one logits .npy file")
    ap.add_argument("--seed-file", help="a ladder seed file (benchmarks/results/issue19_*_seed*.json): its config")
    ap.add_argument("--config", help="the run's arguments instead, as one shell-quoted string")
    ap.add_argument("--variant", action="append", default=[],
                    help='overrides of one student, as one string ("" = the config as it is); repeatable')
    ap.add_argument("--out", help="the result file (default benchmarks/results/issue19_student_<task>_seed<seed>.json)")
    args = ap.parse_args()
    if bool(args.seed_file) == bool(args.config):
        raise SystemExit("give --seed-file or --config (the arguments of the run that labelled the pool)")
    base = json.loads(Path(args.seed_file).read_text())["config"] if args.seed_file else shlex.split(args.config)
    variants = args.variant or [""]
    results = []
    with tempfile.TemporaryDirectory() as work:
        cfg = load_config([*base, "--output_dir", work, "--logging.progress", "false"])
        ctx, seed = make_context(cfg), cfg.data.split_seed
        task = prepare_task(cfg, seed)
        for v in variants:
            cfg_v = load_config([*base, "--output_dir", work, "--logging.progress", "false", *shlex.split(v)])
            pool = pool_subset(task.pool, cfg_v.distill.max_unlabeled, seed)
            path = labels_file(Path(args.labels), pool)
            t0 = time.perf_counter()
            _, rep = train_student(dataclasses.replace(ctx, cfg=cfg_v), task, pool, np.load(path))
            row = {"variant": v, "test_accuracy": rep["student_test"]["accuracy"], "best_step": rep["best_step"],
                   "select": rep["select"], "temperature": rep["temperature"], "steps": cfg_v.distill.steps,
                   "test_per_eval_step": {e["step"]: e.get("test_accuracy") for e in rep["evals"]},
                   "wall_s": round(time.perf_counter() - t0, 1)}
            results.append(row)
            print(f"{v or '(as configured)'}: test {100 * row['test_accuracy']:.2f} at step {row['best_step']} "
                  f"({row['wall_s']:.0f} s)", flush=True)
    out = Path(args.out or f"benchmarks/results/issue19_student_{cfg.data.dataset}_seed{seed}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"issue": 19, "date": date.today().isoformat(), "labels": path.name,
                               "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
                               "config": base, "variants": results}, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
