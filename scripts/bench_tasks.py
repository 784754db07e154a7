"""The one command on tasks it was never tuned for: each task written as a user's CSV files
(train.csv with every labelled row, test.csv, pool.csv of unlabelled text; no dev file), then

  ours     python -m autogpt_jax.train --data.train_file train.csv --data.test_file test.csv
                                       --data.unlabeled_file pool.csv   (no config, no task flag)
  minilm   the same command with --model.name_or_path minilm-l6 (MiniLM alone)
  probe    logistic regression (scikit-learn) on frozen mean-pooled MiniLM embeddings of train.csv
  setfit   SetFit 1.2 with the MiniLM body (pip install setfit; 20 pair iterations, batch 16, 1 epoch)
  peer     PyTorch + peft LoRA on SmolLM2-135M-Instruct given the decoder recipe's generated prompt
           (its first rule template, the class names' first tokens; the recipe's steps and lr grid,
           best on a held-out quarter of train.csv)

Tasks (split seed 42; 16 + 16 labelled rows per class, as LM-BFF's train + dev, given as one file):
  mr           MR sentences, 2 classes, the fixed 2,000-review test set
  airline      US airline tweets, 3 classes, 1,000 test tweets (a fixed subset)
  banking20    BANKING77, 20 intents drawn with the seed, 40 test queries each
  bitext       Bitext customer-support requests by category, 11 classes, its held-out 20%
  bitext_imb   the same, imbalanced: class i keeps max(3, round(32 * 0.7**i)) rows

Each (task, method) writes benchmarks/results/issue38_<task>_<method>_seed<S>.json with its command;
--report combines the files into the table and ends with `mean ours <X> best_other <Y>`.

    python scripts/bench_tasks.py [--tasks mr,airline,banking20,bitext,bitext_imb] [--methods ours,minilm,probe,setfit,peer]
    python scripts/bench_tasks.py --report
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from autogpt_jax.config import load_config
from autogpt_jax.data import fewshot, sources
from autogpt_jax.embedding_head import mean_embeddings
from autogpt_jax.evaluation import accuracy_f1
from autogpt_jax.models import hf
from autogpt_jax.prompts.templates import Template, rule_prompts
from autogpt_jax.selection import recipe_path
from fewshot_peers import TorchDecoder, setfit_run

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TASKS = ("mr", "airline", "banking20", "bitext", "bitext_imb")
METHODS = ("ours", "minilm", "probe", "setfit", "peer")
K = 16


def _labelled_pool(task: str):
    """(train pool, test) as (texts, label names) lists, and the class names."""
    if task in ("mr", "airline"):
        ds = sources.load_dataset(task)
        names = ds["train"].features["label"].names
        test = fewshot.fixed_subset(ds["test"], 2000 if task == "mr" else 1000)
        get = lambda d: (list(d["text"]), [names[i] for i in d["label"]])  # noqa: E731
        return get(ds["train"]), get(test), names
    if task == "banking20":
        ds = sources.load_dataset("banking77")
        all_names = ds["train"].features["label"].names
        pick = sorted(np.random.default_rng(42).choice(len(all_names), 20, replace=False).tolist())
        keep = {all_names[i] for i in pick}
        get = lambda d: [(t, all_names[i]) for t, i in zip(d["text"], d["label"]) if all_names[i] in keep]  # noqa: E731
        tr, te = get(ds["train"]), get(ds["test"])
        return tuple(map(list, zip(*tr))), tuple(map(list, zip(*te))), sorted(keep)
    ds = sources.load_dataset("bitext_support")  # by category
    get = lambda d: (list(d["text"]), list(d["category"]))  # noqa: E731
    tr, te = get(ds["train"]), get(ds["test"])
    return tr, te, sorted(set(tr[1]))


def make_task(task: str, seed: int, out: Path) -> dict:
    """Write train.csv, test.csv and pool.csv for ``task``; their sizes."""
    (tr_x, tr_y), (te_x, te_y), names = _labelled_pool(task)
    rng = np.random.default_rng([seed, 38])
    counts = {n: 2 * K for n in names}
    if task == "bitext_imb":
        order = [names[i] for i in rng.permutation(len(names))]
        counts = {n: max(3, round(2 * K * 0.7 ** i)) for i, n in enumerate(order)}
    y = np.asarray(tr_y)
    chosen = []
    for n in names:
        idx = np.flatnonzero(y == n)
        chosen += idx[rng.permutation(idx.size)[:counts[n]]].tolist()
    chosen_set = set(chosen)
    test_set = set(te_x)
    out.mkdir(parents=True, exist_ok=True)

    def write(path, rows, header):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)

    write(out / "train.csv", [(tr_x[i], tr_y[i]) for i in sorted(chosen)], ("text", "label"))
    write(out / "test.csv", list(zip(te_x, te_y)), ("text", "label"))
    pool = [(t,) for i, t in enumerate(tr_x) if i not in chosen_set and t not in test_set][:4000]
    write(out / "pool.csv", pool, ("text",))
    return {"classes": len(names), "train": len(chosen), "test": len(te_x), "pool": len(pool),
            "per_class": {n: counts[n] for n in names}}


def _read(path: Path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r.get("label") for r in rows]


def run_ours(data: Path, out: Path, extra: list[str]) -> tuple[dict, list[str]]:
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time (the pipeline refuses an old run's checkpoints)
    cmd = [sys.executable, "-m", "autogpt_jax.train", "--data.train_file", str(data / "train.csv"),
           "--data.test_file", str(data / "test.csv"), "--data.unlabeled_file", str(data / "pool.csv"),
           "--output_dir", str(out), *extra]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rep = json.loads((out / "report.json").read_text())
    seed = rep["seeds"][0]
    ft = seed.get("finetune") or {}
    sel = rep.get("backbone_selection") or {}
    return {"accuracy": seed["test"]["accuracy"], "macro_f1": seed["test"]["macro_f1"],
            "recipe": ft.get("mode"), "backbone": sel.get("model", rep["model"]), "f1": seed["test"]["f1"],
            # a combination of backbones: each member's own test accuracy, and whether it held on dev
            "members": seed.get("members"), "combination": sel.get("combination")}, cmd


def minilm_row(task: str, seed: int, data: Path, runs: Path, override: list[str], tag: str = ""
               ) -> tuple[dict, list[str]]:
    """MiniLM alone through the same command. Where ours screened nothing but the encoder recipe (the
    decoder recipe is screened up to its select.max_classes), ours was this very command: its row is reused."""
    ours = result_path(task, "ours", seed, tag)
    rep = runs / "ours" / "report.json"
    if ours.is_file() and rep.is_file() and ours.stat().st_mtime >= rep.stat().st_mtime - 60:
        sel = json.loads(rep.read_text()).get("backbone_selection") or {}
        if not sel.get("candidates") and sel.get("chosen", "").endswith("encoder.yaml"):
            r = json.loads(ours.read_text())
            return {k: r[k] for k in ("accuracy", "macro_f1", "recipe", "backbone", "f1")} | {
                "same_run_as": "ours (the decoder recipe was not screened)"}, r["run"].split()
    return run_ours(data, runs / "minilm", ["--model.name_or_path", "minilm-l6", *override])


def _scores(pred, gold, names) -> dict:
    idx = {n: i for i, n in enumerate(names)}
    r = accuracy_f1(np.asarray([idx[p] for p in pred]), np.asarray([idx[g] for g in gold]), len(names))
    return {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}


def run_probe(data: Path) -> dict:
    from sklearn.linear_model import LogisticRegression

    (x, y), (tx, ty) = _read(data / "train.csv"), _read(data / "test.csv")
    lm = hf.load_model("minilm-l6")
    tok = lm.tokenizer()
    clf = LogisticRegression(max_iter=2000).fit(mean_embeddings(lm.model, tok, x, 128), y)
    return _scores(clf.predict(mean_embeddings(lm.model, tok, tx, 128)), ty, sorted(set(y)))


def run_setfit(data: Path, seed: int, work: Path) -> dict:
    import datasets
    (x, y), (tx, ty) = _read(data / "train.csv"), _read(data / "test.csv")
    names = sorted(set(y))
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    mk = lambda a, b: datasets.Dataset.from_dict({"text": a, "label": [names.index(v) for v in b]}, features=feats)  # noqa: E731
    acc_pred = setfit_run(hf.resolve("minilm-l6"), mk(x, y), mk(tx, ty), seed, str(work), return_pred=True)
    return _scores([names[i] for i in acc_pred], ty, names)


def run_peer(data: Path, seed: int) -> dict:

    (x, y), (tx, ty) = _read(data / "train.csv"), _read(data / "test.csv")
    names = sorted(set(y))
    cfg = load_config(["--config_path", recipe_path("decoder")])
    lm = hf.load_model(cfg.model.name_or_path)
    tok = lm.tokenizer()
    templates, verb = rule_prompts(None, names, decoder=True, chat=True)
    template = Template(templates[0])
    first = [tok(" " + w[0] if template.space_before_mask else w[0], add_special_tokens=False)["input_ids"][0]
             for w in verb.words]
    if len(set(first)) < len(first):
        raise RuntimeError("the class names' first tokens collide: the single-token peer cannot tell them apart")
    tdec = TorchDecoder(hf.resolve(cfg.model.name_or_path), np.asarray(first))
    y_idx = np.asarray([names.index(v) for v in y])
    dev_mask = np.zeros(len(x), bool)
    for c in range(len(names)):  # a quarter of each class held out for the best-dev step, as ours holds out
        idx = np.flatnonzero(y_idx == c)
        dev_mask[idx[np.random.default_rng([seed, c]).permutation(idx.size)[:max(1, idx.size // 4)]]] = True
    enc = lambda texts: template.encode(tok, list(texts), cfg.prompt.max_length, causal=True)  # noqa: E731
    (xs, ps), (dxs, dps) = enc([t for t, m in zip(x, dev_mask) if not m]), enc([t for t, m in zip(x, dev_mask) if m])
    model, _ = tdec.lora((xs, ps, y_idx[~dev_mask]), (dxs, dps, y_idx[dev_mask]), cfg.finetune.lr_grid,
                         cfg.finetune.steps, cfg.finetune.batch_size, seed, cfg.finetune.eval_every)
    pred = tdec.predict(model, *enc(tx))
    return _scores([names[i] for i in pred], ty, names)


def git_commit() -> str:
    """The commit the run used, with "+changes" when the checkout differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return head + ("+changes" if dirty else "")


def result_path(task: str, method: str, seed: int, tag: str = "") -> Path:
    return RESULTS / f"issue38_{task}_{method}{'_' + tag if tag else ''}_seed{seed}.json"


def report(seed: int) -> None:
    rows = {}
    for f in sorted(RESULTS.glob(f"issue38_*_seed{seed}.json")):
        r = json.loads(f.read_text())
        if r.get("tag"):  # a lever's row (--tag): in docs/benchmarks.md, not in the table
            continue
        rows.setdefault(r["task"], {})[r["method"]] = r
    if not rows:
        print("no results yet")
        return
    print(f"| task | classes | {' | '.join(METHODS)} |")
    print("| --- | --- |" + " --- |" * len(METHODS))
    means = {m: [] for m in METHODS}
    for task in [t for t in TASKS if t in rows]:
        cells = []
        for m in METHODS:
            r = rows[task].get(m)
            if r is None:
                cells.append("-")
                continue
            means[m].append(r["accuracy"])
            when = "ours' run" if r.get("same_run_as") else f"{r['minutes']:.1f} min"
            cells.append(f"{100 * r['accuracy']:.1f} / {100 * r['macro_f1']:.1f} ({when})")
        n = next(iter(rows[task].values())).get("sizes", {}).get("classes", "?")
        print(f"| {task} | {n} | " + " | ".join(cells) + " |")
    print("| mean accuracy | | " + " | ".join(f"{100 * np.mean(means[m]):.1f}" if len(means[m]) == len(rows) else "-"
                                           for m in METHODS) + " |")
    complete = [t for t in rows if all(m in rows[t] for m in METHODS)]
    print(f"cells: accuracy / macro-F1 % (wall minutes); tasks with every method: {complete or 'none'}")
    ours = [100 * rows[t]["ours"]["accuracy"] for t in rows if "ours" in rows[t]]
    others = {m: [100 * rows[t][m]["accuracy"] for t in rows if m in rows[t] and "ours" in rows[t]]
              for m in METHODS if m != "ours"}
    best_other = max((np.mean(v) for v in others.values() if len(v) == len(ours) and v), default=float("nan"))
    print(f"mean ours {np.mean(ours):.1f} best_other {best_other:.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", default="runs/bench_tasks")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--override", action="append", default=[], help="an extra argument for ours and minilm")
    ap.add_argument("--tag", default="", help="a lever's name: its rows are written beside the table's, not in it")
    args = ap.parse_args()
    if args.report:
        report(args.seed)
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    for task in args.tasks.split(","):
        work = Path(args.work) / f"{task}_seed{args.seed}"
        runs = work / args.tag if args.tag else work
        sizes = make_task(task, args.seed, work / "data")
        print(f"== {task}: {sizes['classes']} classes, {sizes['train']} labelled rows, {sizes['test']} test, "
              f"{sizes['pool']} unlabelled", flush=True)
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            cmd = None
            if method == "ours":
                res, cmd = run_ours(work / "data", runs / "ours", args.override)
            elif method == "minilm":
                res, cmd = minilm_row(task, args.seed, work / "data", runs, args.override, args.tag)
            elif method == "probe":
                res = run_probe(work / "data")
            elif method == "setfit":
                res = run_setfit(work / "data", args.seed, work)
            elif method == "peer":
                res = run_peer(work / "data", args.seed)
            else:
                raise SystemExit(f"unknown method {method!r}; choose from {METHODS}")
            res.update(task=task, method=method, seed=args.seed, sizes=sizes, tag=args.tag, minutes=(time.perf_counter() - t0) / 60,
                       date=datetime.date.today().isoformat(),
                       command=" ".join(["python", "scripts/bench_tasks.py", "--tasks", task, "--methods", method,
                                         "--seed", str(args.seed), *[f"--override={o}" for o in args.override],
                                         *(["--tag", args.tag] if args.tag else [])]),
                       commit=git_commit(),
                       run=cmd and " ".join(str(c) for c in cmd))
            result_path(task, method, args.seed, args.tag).write_text(json.dumps(res, indent=1) + "\n")
            print(f"   {method}: accuracy {100 * res['accuracy']:.1f}, macro-F1 {100 * res['macro_f1']:.1f}, "
                  f"{res['minutes']:.1f} min", flush=True)
    report(args.seed)


if __name__ == "__main__":
    main()
