"""The lever ladder of scripts/bench_fewshot.py (--ladder decoder|minilm): one pipeline run per split
seed with every lever, eval.compare recording the test accuracy after each (the baselines before
adaptation, then adaptation, calibration, the ensemble, each self-training generation, the
distilled student), eval.grid_test each lr's test accuracy (how the selection rules compare); the
PyTorch + peft LoRA peer on the same split (decoder ladder). Each seed's result is written as
benchmarks/results/issue19_<ladder>_<task>[_<tag>]_seed<seed>.json; --report prints the table from them."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from autogpt_jax.config import load_config
from autogpt_jax.data import fewshot, sources
from autogpt_jax.data.task import prepare_task
from autogpt_jax.pipeline import run_pipeline
from autogpt_jax.pseudolabels import pool_subset, select_confident, soft_targets, texts_hash
from fewshot_decoder import decoder_inputs, peer_lora

RESULTS = Path("benchmarks/results")
QUIET = ["--logging.tensorboard", "false"]
LADDERS = {
    # the decoder's best recipe plus every lever it leaves out (the settings of seed 42's run):
    # a dev-weighted ensemble of 3 templates with contextual calibration, two self-training
    # generations (64 then 256 per class above 0.9, hard labels, word dropout 0.1, 80 steps, 2,000
    # pool reviews), the student distilled from the ensemble over the whole pool (distill.teacher's
    # default; results before 2026-12-04 distilled from the last generation)
    "decoder": ("configs/sentiment_mr_best.yaml",
                ["--stages", "prompt,adapt,finetune,selftrain,evaluate,distill,export", "--prompt.ensemble", "3",
                 "--prompt.ensemble_weighting", "dev", "--prompt.calibrate", "content_free",
                 "--selftrain.generations", "2", "--selftrain.per_class", "64", "--selftrain.growth", "4",
                 "--selftrain.threshold", "0.9", "--selftrain.temperature", "0", "--selftrain.max_unlabeled", "2000",
                 "--selftrain.steps", "80", "--selftrain.word_dropout", "0.1"]),
    # MiniLM alone: its own config (similarity prompt, adapt) with its own ensemble and
    # self-training, no decoder teacher; the settings of seed 42's best run (full fine-tuning at
    # 2e-5 / 5e-6, which beat BitFit by +2.3 after two generations; the rule words and templates,
    # search_steps 0; hard labels, 256 then 512 per class above 0.9 from 4,000 pool reviews)
    "minilm": ("configs/sentiment_mr.yaml",
               ["--stages", "prompt,adapt,finetune,selftrain,evaluate", "--prompt.ensemble", "3",
                "--prompt.calibrate", "content_free", "--peft.method", "none", "--finetune.learning_rates", "2e-5,5e-6",
                "--prompt.label_words", "negative=terrible|positive=great", "--prompt.search_steps", "0",
                "--selftrain.generations", "2", "--selftrain.per_class", "256", "--selftrain.growth", "2",
                "--selftrain.threshold", "0.9", "--selftrain.temperature", "0", "--selftrain.max_unlabeled", "4000"]),
}
TASKS = {
    "mr": [],
    # 3 classes; the decoder's label words and a 3-way question
    "airline": ["--data.dataset", "airline"],
}
# per ladder: the task's label words in place of MR's (class order negative, neutral, positive)
LADDER_TASK = {("decoder", "airline"): ["--prompt.label_words", "negative=negative|neutral=neutral|positive=positive"],
               ("minilm", "airline"): ["--prompt.label_words", "negative=terrible|neutral=okay|positive=great"]}


def _acc(r) -> float:
    return float(r["accuracy"])


def selection_rules(grid: list[dict]) -> dict[str, float]:
    """The test accuracy each lr-selection rule would have given on this seed's grid."""
    ll = lambda g: float("inf") if g.get("best_dev_log_loss") is None else g["best_dev_log_loss"]  # noqa: E731
    first = max(range(len(grid)), key=lambda i: (grid[i]["best_dev_accuracy"], -i))
    tie = max(range(len(grid)), key=lambda i: (grid[i]["best_dev_accuracy"], -ll(grid[i]), -i))
    by_ll = min(range(len(grid)), key=lambda i: (ll(grid[i]), i))
    return {"accuracy, first on ties (before)": grid[first]["test_accuracy"],
            "accuracy, ties by log-loss (now)": grid[tie]["test_accuracy"],
            "dev log-loss": grid[by_ll]["test_accuracy"]}


def ladder_rows(rep: dict) -> dict[str, tuple[float, float]]:
    """(test accuracy, wall seconds) after each lever, in ladder order."""
    s, t = rep["seeds"][0], rep["timings"]
    wall = lambda *names: sum(t.get(n, {}).get("wall_s", 0.0) for n in names)  # noqa: E731
    rows = {"zero-shot prompt": (_acc(s["baselines"]["zero_shot"]), 0.0),
            "prompt FT (PEFT), no adaptation": (_acc(s["baselines"]["prompt_ft"]), wall("baselines"))}
    lad = s.get("ensemble", {}).get("test_ladder", {})
    adapted = "adapt" in rep["stages"]
    rows["+ adaptation" if adapted else "prompt FT (PEFT)"] = (lad.get("single", _acc(s["test"])),
                                                              wall("adapt", "finetune"))
    if "single_calibrated" in lad:
        rows["+ calibration"] = (lad["single_calibrated"], 0.0)
    if "ensemble_dev" in lad:
        n = len(s["ensemble"]["members"])
        rows[f"+ ensemble of {n} (uniform)"] = (lad["ensemble_uniform"], wall("ensemble"))
        rows[f"+ ensemble of {n} (dev-weighted)"] = (lad["ensemble_dev"], 0.0)
    kind = "iPET" if s.get("selftrain", {}).get("ipet") else "self-training"
    for g in s.get("selftrain", {}).get("generations", []):
        rows[f"+ {kind} generation {g['generation']}"] = (g["test_accuracy"], g["wall_s"])
    if "kept_generation" in s.get("selftrain", {}):  # what the run exports (selftrain.keep)
        rows[f"{kind}: the task model kept (selftrain.keep {s['selftrain']['keep']})"] = (_acc(s["test"]), 0.0)
    if "distill" in s:
        d = s["distill"]
        whose = {"ensemble": "the ensemble's"}.get(d.get("teacher_source"), "the teacher's")
        rows[f"MiniLM student on {whose} soft labels (whole pool)"] = (
            _acc(d["student_test"]), d["train_wall_time_s"] + d["teacher_labelling_s"])
    return rows


def ladder_argv(kind: str, task: str, seed: int, out_dir: str, args) -> list[str]:
    cfg_path, extra = LADDERS[kind]
    return ["--config_path", cfg_path, "--output_dir", out_dir, "--data.split_seed", str(seed),
            "--eval.compare", "true", "--eval.grid_test", "true", *QUIET, *extra, *TASKS[task],
            *LADDER_TASK.get((kind, task), []), *args.override]


def seed_result(kind: str, task: str, seed: int, argv: list[str], rep: dict, wall_s: float, args) -> dict:
    """One seed's result file from its pipeline report."""
    out = {"issue": 19, "ladder": kind, "task": task, "seed": seed, "tag": args.tag, "date": date.today().isoformat(),
           "command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "config": argv,
           "rows": ladder_rows(rep), "selection": selection_rules(rep["seeds"][0]["finetune"]["grid"]),
           "timings": rep["timings"], "wall_s": round(wall_s, 1),
           "final_test_accuracy": _acc(rep["seeds"][0]["test"])}
    s = rep["seeds"][0]
    if "distill" in s:
        out["student"] = {k: s["distill"][k] for k in ("student_sentences_per_s", "teacher_sentences_per_s",
                                                        "speedup", "pool", "best_step")}
        out["student"].update(teacher_source=s["distill"].get("teacher_source"),
                              teacher_test_accuracy=_acc(s["distill"]["teacher_test"]))
        out["student_selection"] = student_rules(s["distill"].get("evals", []))
    out["ensemble_members"] = s.get("ensemble", {}).get("members")
    out["selftrain"] = s.get("selftrain")
    return out


def run_seed(kind: str, task: str, seed: int, work: str, args) -> dict:
    out_dir = tempfile.mkdtemp(dir=work)
    argv = ladder_argv(kind, task, seed, out_dir, args)
    t0 = time.perf_counter()
    cfg = load_config(argv)
    rep = run_pipeline(cfg)
    res = seed_result(kind, task, seed, argv, rep, time.perf_counter() - t0, args)
    try:  # a diagnostic: its failure must not lose the seed's hours of results
        res["pseudo_labels"] = pool_label_quality(Path(out_dir) / "cache" / "pool_labels", cfg, seed)
    except Exception as e:  # noqa: BLE001
        print(f"seed {seed}: pool-label quality not measured ({type(e).__name__}: {e})", file=sys.stderr)
    if args.keep_labels:
        kept = Path(args.keep_labels) / f"{kind}_{task}{'_' + args.tag if args.tag else ''}_seed{seed}"
        if (Path(out_dir) / "cache" / "pool_labels").is_dir():
            shutil.copytree(Path(out_dir) / "cache" / "pool_labels", kept / "pool_labels", dirs_exist_ok=True)
        kept.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(out_dir) / "report.json", kept / "report.json")
        res["labels_kept_in"] = str(kept)
    return res


TOP_K = (16, 64, 256, 1024)


def pool_label_quality(cache_dir: Path, cfg, seed: int) -> list[dict]:
    """How right the teachers' pool labels were: the labelled pool keeps its labels (the pipeline
    never reads them), so every logits file of the run's pool-label cache (in the order they were
    written: the self-training generations' teachers, then the student's) is scored against them:
    the teacher's accuracy on those texts, its prediction share per class, the accuracy of each
    class's k most confident predictions, and (plain self-training) of the texts each generation kept."""
    task = prepare_task(cfg, seed)
    names = task.names
    labelled = sources.load_dataset(cfg.data.dataset)["train"] if cfg.data.dataset else None
    lab = dict(zip(labelled["text"], labelled["label"])) if labelled is not None else {}
    sc, dc = cfg.selftrain, cfg.distill
    st_pool = pool_subset(task.pool, sc.max_unlabeled, seed)
    pools = {texts_hash(p): (what, p) for what, p in (("distill", pool_subset(task.pool, dc.max_unlabeled, seed)),
                                                       ("selftrain", st_pool))}
    out, gen = [], 0
    for f in sorted(Path(cache_dir).glob("logits-*.npy"), key=lambda f_: f_.stat().st_mtime):
        what, texts = pools.get(f.stem.rsplit("-", 1)[1], (None, None))
        if texts is None or not lab:
            continue
        y = np.asarray([lab[t] for t in texts])
        probs = soft_targets(np.load(f), 1.0)
        pred, conf = probs.argmax(-1), probs.max(-1)
        row = {"file": f.name, "for": what, "texts": len(texts), "teacher_accuracy": float(np.mean(pred == y)),
               "prediction_share": {n: float(np.mean(pred == c)) for c, n in enumerate(names)},
               "top_k_accuracy": {}}
        for k in TOP_K:
            per = []
            for c in range(len(names)):
                idx = np.flatnonzero(pred == c)
                idx = idx[np.argsort(-conf[idx], kind="stable")][:k]
                per.append(float(np.mean(y[idx] == c)) if idx.size else None)
            row["top_k_accuracy"][str(k)] = per
        if what == "selftrain" and not sc.ipet and "selftrain" in cfg.stage_list and gen < sc.generations:
            gen += 1
            idx = select_confident(probs, sc.kept_per_class(gen), sc.threshold, sc.min_per_class)
            row.update(generation=gen, kept=int(idx.size), kept_accuracy=float(np.mean(y[idx] == pred[idx])))
        out.append(row)
    return out


def torch_peer(task: str, seed: int, tdec, cfg, tok, model) -> tuple[float, float]:
    """PyTorch + peft LoRA on the same split, same recipe and lr grid (best on dev)."""
    data = sources.load_dataset(task)
    train, dev = fewshot.fewshot_split(data["train"], cfg.data.k_shot, seed)
    t0 = time.perf_counter()
    classes = data["train"].features["label"].names
    test_seqs, test_pos, _ = decoder_inputs(cfg, tok, model, data["test"]["text"], classes)
    acc = peer_lora(tdec, cfg, tok, model, train, dev, test_seqs, test_pos, np.asarray(list(data["test"]["label"])),
                    seed, classes)
    return acc, time.perf_counter() - t0


def result_path(args, seed: int) -> Path:
    tag = f"_{args.tag}" if args.tag else ""
    return RESULTS / f"issue19_{args.ladder}_{args.task}{tag}_seed{seed}.json"


def student_rules(evals: list[dict]) -> dict[str, float]:
    """The test accuracy of the student step each rule keeps (evals: the distill stage's, with
    eval.grid_test's test accuracy at every eval step); ties go to the later step, as in fit."""
    evals = [e for e in evals if e["step"] > 0 and "test_accuracy" in e]
    if not evals:
        return {}
    best = lambda key: max(evals, key=lambda e: (e[key], e["step"]))  # noqa: E731
    out = {"dev accuracy (before)": best("dev_accuracy"), "last step": evals[-1]}
    if "teacher_agreement" in evals[0]:
        out["held-out teacher agreement (now)"] = best("teacher_agreement")
    return {k: {"step": e["step"], "test_accuracy": e["test_accuracy"]} for k, e in out.items()}


PEER_ROW = "PyTorch + peft LoRA (same split, recipe and grid)"


def main_ladder(args, peer_factory=None):
    """Run the ladder for each seed (``peer_factory``: builds the PyTorch peer for the decoder ladder).
    ``args.from_report``: build the seed's file from a finished pipeline's report.json instead of
    running it (a run whose peer did not get to run); ``args.peer_only``: add the peer's row to the
    seed files already written (a long seed split over two sessions)."""
    seeds = [int(s_) for s_ in args.seeds.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    peer = peer_factory(args.task) if (peer_factory and args.ladder == "decoder" and not args.skip_torch
                                       and not args.pool_quality) else None
    with tempfile.TemporaryDirectory() as work:
        for seed in seeds:
            path = result_path(args, seed)
            if args.peer_only:
                if peer is None:
                    raise SystemExit("--peer-only: the decoder ladder's peer (without --skip-torch)")
                res = json.loads(path.read_text())
            elif args.pool_quality:
                res = json.loads(path.read_text())
                res["pseudo_labels"] = pool_label_quality(Path(args.pool_quality), load_config(res["config"]), seed)
                res["pseudo_labels_command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
                if not res["pseudo_labels"]:
                    raise SystemExit(f"--pool-quality {args.pool_quality}: no logits file of seed {seed}'s pools there")
            elif args.from_report:
                rep = json.loads(Path(args.from_report).read_text())
                if rep["config"]["data"]["split_seed"] != seed or "seeds" not in rep:
                    raise SystemExit(f"--from-report {args.from_report}: not a finished run of split seed {seed}")
                argv = ladder_argv(args.ladder, args.task, seed, str(Path(args.from_report).parent), args)
                res = seed_result(args.ladder, args.task, seed, argv, rep, rep["wall_time_s"], args)
                res["from_report"] = args.from_report
            else:
                res = run_seed(args.ladder, args.task, seed, work, args)
            if peer is not None:
                acc, secs = peer(seed)
                res["rows"][PEER_ROW] = (acc, secs)
                if args.peer_only:
                    res["peer_command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
            path.write_text(json.dumps(res, indent=1) + "\n")
            print(f"seed {seed}: " + ", ".join(f"{k} {100 * v[0]:.1f}" for k, v in res["rows"].items()) +
                  f"  -> {path}", flush=True)


def report_ladder(files: list[str], markdown: bool = False):
    """The ladder table: each row's mean ± std over the seeds, its gain over the row before, and its
    wall time per seed; then the lr-selection rules (``markdown``: the rows as a Markdown table)."""
    res = [json.loads(Path(f).read_text()) for f in files]
    names: list[str] = []
    for r in res:
        names += [k for k in r["rows"] if k not in names]
    print(f"\n{res[0]['ladder']} ladder, {res[0]['task']}, seeds {[r['seed'] for r in res]} "
          f"(accuracy %, mean ± std; gain over the row before; wall s per seed)")
    if markdown:
        print("\n| row | " + " | ".join(str(r["seed"]) for r in res) + " | mean ± std | gain | wall s / seed |")
        print("| --- |" + " --- |" * (len(res) + 3))
    w, prev = max(len(k) for k in names), None
    for k in names:
        vals = [r["rows"][k] for r in res if k in r["rows"]]
        a = 100 * np.asarray([v[0] for v in vals])
        aside = k.startswith(("PyTorch", "MiniLM student")) or "task model kept" in k  # not a step of the ladder
        gain = "" if prev is None or aside else f"{a.mean() - prev:+5.1f}"
        secs = np.mean([v[1] for v in vals])
        if markdown:
            cells = [f"{100 * r['rows'][k][0]:.1f}" if k in r["rows"] else "" for r in res]
            print(f"| {k} | " + " | ".join(cells) + f" | {a.mean():.1f} ± {a.std():.1f} | {gain.strip()} | {secs:.0f} |")
        else:
            print(f"  {k:<{w}}  {a.mean():5.1f} ± {a.std():3.1f} (n={len(a)})  {gain:>6}  {secs:7.0f} s")
        if not (aside or k.startswith("zero-shot")):
            prev = a.mean()
    if markdown:
        print()
    sp = [r["student"]["speedup"] for r in res if r.get("student")]
    if sp:
        print(f"  student speed: {np.mean(sp):.1f}x its teacher's sentences/s (min {min(sp):.1f})")
    print("  lr selection (test accuracy of the grid point each rule picks):")
    for rule in res[0]["selection"]:
        a = 100 * np.asarray([r["selection"][rule] for r in res])
        print(f"    {rule:<36} {a.mean():5.1f} ± {a.std():3.1f}")
    rules = [r.get("student_selection") for r in res if r.get("student_selection")]
    if rules:
        print("  student step selection (test accuracy of the step each rule keeps):")
        for rule in rules[0]:
            a = 100 * np.asarray([r[rule]["test_accuracy"] for r in rules])
            print(f"    {rule:<36} {a.mean():5.1f} ± {a.std():3.1f}  steps {[r[rule]['step'] for r in rules]}")
    print(f"  wall per seed: {np.mean([r['wall_s'] for r in res]):.0f} s")
