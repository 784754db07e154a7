"""Customer-service question answering, measured on real data (issue 8).

Intent detection on BANKING77 (configs/banking77.yaml: MiniLM, similarity prompt over the intent
names, full fine-tuning), 10-shot over the five LM-BFF split seeds and on the full training set,
with the hand-over threshold calibrated on dev + CLINC150's out-of-scope validation queries and
measured on CLINC150's 1,000 out-of-scope test queries.

Answer retrieval on the Bitext customer-support set (the whole configs/support_qa.yaml run, which
also trains its Bitext intent model and exports both):
held-out questions (split by question) against the answer index built from the training pairs'
responses; Recall@1/@5 and MRR, where an answer is relevant when it answers the question's intent.
Rows: BM25 over the same answers (rank_bm25), the MiniLM bi-encoder before and after contrastive
fine-tuning.

    python scripts/bench_support.py [--part intent,full,retrieval] [--seeds 13,21,42,87,100]
        [--full-steps 600] [--results R.json]

Results accumulate in --results (JSON, one key per part) so parts can run in separate processes;
the table is printed from whatever the file holds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, installed or not

from autogpt_jax.config import load_config  # noqa: E402
from autogpt_jax.pipeline import run_pipeline  # noqa: E402
from autogpt_jax.retrieval.answers import build_answers, pair_data  # noqa: E402
from autogpt_jax.retrieval.index import rank_metrics  # noqa: E402

# Published anchors (BANKING77 test accuracy): Casanueva et al. 2020 and later few-shot work with
# BERT-large-sized encoders (~335M parameters, 15x MiniLM's 22.7M).
ANCHOR_10SHOT = "85-90"
ANCHOR_FULL = "93.7"


def _pipeline(args: list[str]) -> dict:
    return run_pipeline(load_config(["--logging.progress", "false", "--logging.tensorboard", "false", *args]))


def intent_part(seeds: str, workdir: str, extra: list[str]) -> dict:
    t0 = time.perf_counter()
    rep = _pipeline(["--config_path", str(ROOT / "configs/banking77.yaml"), "--output_dir", tempfile.mkdtemp(dir=workdir),
                     "--eval.seeds", seeds, "--stages", "finetune,evaluate", *extra])
    s = rep["summary"]
    per_seed = [{"seed": r["seed"], "accuracy": r["test"]["accuracy"], "steps": r["finetune"]["chosen"].get("steps"),
                 "handover": r["handover"]} for r in rep["seeds"]]
    return {"accuracy": s["test_accuracy"], "macro_f1": s["test_macro_f1"],
            "in_scope_accuracy": s.get("handover_in_scope_accuracy"),
            "out_of_scope_recall": s.get("handover_out_of_scope_recall"), "per_seed": per_seed,
            "wall_time_s": round(time.perf_counter() - t0, 1)}


def bm25_row(cfg) -> dict:
    """BM25 (rank_bm25's Okapi, k1 1.5, b 0.75) over the same answer set, lower-cased word tokens."""
    import re

    from rank_bm25 import BM25Okapi

    train, held = pair_data(cfg.retrieval.dataset)
    answers = build_answers(train, cfg.retrieval.answers_per_intent, cfg.retrieval.company,
                            seed=cfg.data.split_seed)
    words = lambda t: re.findall(r"\w+", t.lower())  # noqa: E731
    bm25 = BM25Okapi([words(a.text) for a in answers])
    scores = np.stack([bm25.get_scores(words(q)) for q in held["question"]])
    return rank_metrics(scores, list(held["intent"]), [a.intent for a in answers])


def retrieval_part(workdir: str, extra: list[str]) -> dict:
    t0 = time.perf_counter()
    out = tempfile.mkdtemp(dir=workdir)
    args = ["--config_path", str(ROOT / "configs/support_qa.yaml"), "--output_dir", out, *extra]
    rep = _pipeline(args)
    r = rep["retrieval"]
    bm25 = bm25_row(load_config(args))
    intent = rep["seeds"][0] if rep.get("seeds") else None
    return {"export": str(Path(out) / "export"), "wall_time_s_pipeline": rep.get("wall_time_s"),
            "bitext_intent": {"test": {k: intent["test"][k] for k in ("accuracy", "macro_f1")},
                              "handover": intent.get("handover")} if intent else None,
            "questions": r["held_out_questions"], "answers": r["answers"], "intents": r["intents"],
            "rows": {"BM25 (rank_bm25)": bm25, "MiniLM bi-encoder, before fine-tuning": r["before"],
                     "MiniLM bi-encoder, contrastive fine-tuned": r["after"]},
            "train": {**r["train"], "temperature": r["temperature"]}, "index_build_s": r["index_build_s"],
            "wall_time_s": round(time.perf_counter() - t0, 1)}


def pct(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}" + (f" (n={v['n']})" if v.get("n", 1) > 1 else "")
    return f"{100 * v:.1f}"


def print_table(res: dict) -> None:
    if "intent" in res or "full" in res:
        print("BANKING77 test accuracy (3,080 questions), MiniLM-L6 (22.7M parameters), similarity prompt over intent names")
        print(f"  {'setting':<22}{'accuracy %':<22}{'macro-F1 %':<22}{'published (BERT-large-sized, ~15x)':<36}")
        for key, name, anchor in (("intent", "10-shot", ANCHOR_10SHOT), ("full", "full (10,003)", ANCHOR_FULL)):
            if key in res:
                r = res[key]
                gap = ""
                if key == "full":
                    gap = f"  ({100 * r['accuracy']['mean'] - float(ANCHOR_FULL):+.1f} points)"
                elif key == "intent":
                    lo, hi = (float(x) for x in ANCHOR_10SHOT.split("-"))
                    gap = f"  ({100 * r['accuracy']['mean'] - lo:+.1f} to the low end, {100 * r['accuracy']['mean'] - hi:+.1f} to the high)"
                print(f"  {name:<22}{pct(r['accuracy']):<22}{pct(r['macro_f1']):<22}{anchor}{gap}")
        print("Hand-over (temperature-scaled confidence below a threshold chosen on dev + 100 CLINC150 out-of-scope "
              "validation queries; measured on BANKING77 test + 1,000 CLINC150 out-of-scope test queries)")
        for key, name in (("intent", "10-shot"), ("full", "full")):
            if key in res:
                r = res[key]
                th = [p["handover"]["threshold"] for p in r["per_seed"]]
                print(f"  {name:<10} in-scope accuracy {pct(r['in_scope_accuracy'])}  out-of-scope recall "
                      f"{pct(r['out_of_scope_recall'])}  threshold {np.mean(th):.3f}  ({r['wall_time_s']:.0f} s)")
    if "retrieval" in res:
        r = res["retrieval"]
        print(f"Bitext answer retrieval: {r['questions']} held-out questions, {r['answers']} answers in the index "
              f"({r['intents']} intents); relevant = an answer of the question's intent")
        print(f"  {'method':<44}{'Recall@1':>10}{'Recall@5':>10}{'MRR':>8}")
        for name, m in r["rows"].items():
            print(f"  {name:<44}{100 * m['recall@1']:>10.1f}{100 * m['recall@5']:>10.1f}{m['mrr']:>8.3f}")
        if r.get("bitext_intent"):
            bi = r["bitext_intent"]
            ho = bi.get("handover") or {}
            t = ho.get("test", {})
            print(f"  the same run's intent model (27 Bitext intents, all training questions): test accuracy "
                  f"{pct(bi['test']['accuracy'])}; hand-over threshold {ho.get('threshold', 0):.3f}: in-scope accuracy "
                  f"{pct(t.get('in_scope_accuracy'))}, out-of-scope recall {pct(t.get('out_of_scope_recall'))} (CLINC150)")
        print(f"  contrastive fine-tuning: {r['train']['steps']} steps, batch {r['train']['batch_size']}, "
              f"temperature {r['train']['temperature']}, {r['train']['wall_time_s']:.0f} s; index build "
              f"{r['index_build_s']:.1f} s; part wall time {r['wall_time_s']:.0f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="intent,full,retrieval")
    ap.add_argument("--seeds", default="13,21,42,87,100")
    ap.add_argument("--full-steps", type=int, default=600)
    ap.add_argument("--full-seed", default="42")
    ap.add_argument("--results", default=None, help="JSON file the results accumulate in")
    ap.add_argument("--report", action="store_true", help="only print the table from --results")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    res = json.loads(Path(args.results).read_text()) if args.results and Path(args.results).exists() else {}
    if not args.report:
        workdir = args.workdir or tempfile.mkdtemp(prefix="bench_support_")
        for part in [p.strip() for p in args.part.split(",") if p.strip()]:
            if part == "intent":
                res["intent"] = intent_part(args.seeds, workdir, [])
            elif part == "full":
                res["full"] = intent_part(args.full_seed, workdir, [
                    "--data.k_shot", "0", "--finetune.steps", str(args.full_steps), "--finetune.batch_size", "32",
                    "--finetune.eval_every", str(max(50, args.full_steps // 6))])
            elif part == "retrieval":
                res["retrieval"] = retrieval_part(workdir, [])
            else:
                ap.error(f"unknown part {part!r}: choose from intent, full, retrieval")
            if args.results:
                Path(args.results).write_text(json.dumps(res, indent=1))
    print_table(res)
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
