"""Every calibration method on one exported model, on the same split: test accuracy (and the share
of test predictions per class) with no bias, content-free, dev prior, both, and pool prior matching
at several pool sizes. The model is scored once per text set; each method is only a bias.

    python scripts/bench_calibration.py --export RUN/export [--pool 250,1000,4000] -- PIPELINE ARGS

PIPELINE ARGS are the run's own (``--config_path ... --data.split_seed S``): they give the task
(its test set, its dev set, its unlabelled pool and the labelled class share)."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from autogpt_jax.calibration import content_free_texts, fit_bias
from autogpt_jax.config import load_config
from autogpt_jax.evaluation import log_softmax
from autogpt_jax.data.task import prepare_task
from autogpt_jax.export_format import load_classifier
from autogpt_jax.pseudolabels import pool_subset


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, help="the run's export directory")
    ap.add_argument("--pool", default="250,1000,4000", help="pool sizes for prior matching (comma-separated)")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--output", help="also write the figures to this JSON file")
    ap.add_argument("pipeline", nargs=argparse.REMAINDER, help="-- then the run's pipeline arguments")
    args = ap.parse_args(argv)
    cfg = load_config([a for a in args.pipeline if a != "--"])
    task = prepare_task(cfg, cfg.data.split_seed)
    clf = load_classifier(args.export)
    clf.logit_bias = None
    bs, t0 = args.batch_size, time.perf_counter()
    test_y, dev_y = np.asarray(task.test["label"]), np.asarray(task.dev["label"])
    test = clf.logits(list(task.test["text"]), bs, progress="test")
    dev = clf.logits(list(task.dev["text"]), bs, progress="dev")
    cf = clf.logits(content_free_texts(clf.tokenizer), bs)
    prior = task.labelled_share()
    sizes = sorted(int(s) for s in args.pool.split(","))
    pool = pool_subset(task.pool, sizes[-1], task.seed)
    pool_logits = clf.logits(pool, bs, progress="pool")
    score_s = time.perf_counter() - t0
    scored = dict(dev_logits=dev, dev_labels=dev_y, content_free_logits=cf, prior=prior)
    biases = {"none": np.zeros(len(task.names), np.float32)}
    for name, method in (("content_free", "content_free"), ("prior (dev)", "prior"), ("both", "both")):
        biases[name] = fit_bias(method, **scored)[0]
    for n in sizes:
        idx = [pool.index(t) for t in pool_subset(task.pool, n, task.seed)]  # the stage's own sample of n
        biases[f"pool ({len(idx)})"] = fit_bias("pool", pool_logits=pool_logits[idx], prior=prior)[0]
    out = {"export": args.export, "split_seed": task.seed, "pipeline": args.pipeline, "score_s": round(score_s, 1),
           "pool_prediction_share": (np.bincount(pool_logits.argmax(-1), minlength=len(task.names))
                                     / len(pool_logits)).round(3).tolist(),
           "methods": {}}
    print(f"split seed {task.seed}, {len(test_y)} test texts, pool share predicted "
          f"{np.round(np.exp(log_softmax(pool_logits)).mean(0), 3).tolist()} (scored in {score_s:.0f} s)")
    for name, b in biases.items():
        pred = (test + b).argmax(-1)
        acc = float((pred == test_y).mean())
        share = (np.bincount(pred, minlength=len(task.names)) / len(pred)).round(3).tolist()
        out["methods"][name] = {"test_accuracy": acc, "test_prediction_share": share, "bias": np.round(b, 4).tolist()}
        print(f"  {name:<18} test {100 * acc:5.1f}  predicted share {share}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
