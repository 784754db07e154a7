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

    python scripts/bench_fewshot.py [--seeds 13,21,42,87,100] [--ablations no_auto_prompt,joint,fgm|all] [--skip-torch]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def mean_std(xs):
    a = 100 * np.asarray(xs, np.float64)
    return f"{a.mean():5.1f} ± {a.std():4.1f}"


def run_ours(seed: int, extra: list[str], workdir: str) -> dict:
    from autogpt_jax.config import load_config
    from autogpt_jax.pipeline import run_pipeline

    out = tempfile.mkdtemp(dir=workdir)
    cfg = load_config(["--config_path", "configs/sentiment_mr.yaml", "--output_dir", out, "--data.split_seed", str(seed),
                       "--logging.progress", "false", "--logging.tensorboard", "false", *extra])
    return run_pipeline(cfg)


def embed(lm, tok, texts, batch=64):
    import jax.numpy as jnp

    from autogpt_jax.data import batching

    seqs = batching.encode(tok, list(texts), 128)
    out = np.zeros((len(seqs), lm.config.hidden_size), np.float32)
    for idx, b in batching.eval_batches(seqs, batch, tok.pad_token_id or 0):
        h = lm.model(jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"]))
        p = np.asarray(lm.model.pool(h, jnp.asarray(b["attention_mask"]), "mean"))
        real = idx >= 0
        out[idx[real]] = p[real]
    return out


def torch_head_ft(model_dir, train, dev, test, lrs, steps, batch, seed):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(str(model_dir))

    def enc(ds):
        e = tok(list(ds["text"]), padding=True, truncation=True, max_length=64, return_tensors="pt")
        return e, torch.tensor(list(ds["label"]))

    (xtr, ytr), (xdv, ydv), (xte, yte) = enc(train), enc(dev), enc(test)

    def acc(model, x, y):
        model.eval()
        preds = []
        with torch.inference_mode():
            for i in range(0, len(y), 128):
                preds.append(model(**{k: v[i:i + 128] for k, v in x.items()}).logits.argmax(-1))
        model.train()
        return float((torch.cat(preds) == y).float().mean())

    best = (-1.0, None)
    for lr in lrs:
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=2).train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        g = torch.Generator().manual_seed(seed)
        best_dev, best_state = -1.0, None
        for step in range(1, steps + 1):
            idx = torch.randint(0, len(ytr), (batch,), generator=g)
            loss = model(**{k: v[idx] for k, v in xtr.items()}, labels=ytr[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 10 == 0:
                d = acc(model, xdv, ydv)
                if d >= best_dev:
                    best_dev, best_state = d, {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best_state)
        if best_dev > best[0]:
            best = (best_dev, acc(model, xte, yte))
    return best[1]


def setfit_run(model_dir, train, test, seed, workdir):
    """SetFit (contrastive fine-tuning of the sentence encoder, then a logistic-regression head) with
    its documented few-shot defaults: 20 pair iterations per example, batch 16, one epoch."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from setfit import SetFitModel, Trainer, TrainingArguments

    torch.set_num_threads(os.cpu_count() or 1)
    word = models.Transformer(str(model_dir), max_seq_length=64)
    body = SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), "mean"),
                                        models.Normalize()], device="cpu")
    model = SetFitModel(model_body=body, model_head=__import__("sklearn.linear_model", fromlist=["x"])
                        .LogisticRegression(max_iter=2000))
    args = TrainingArguments(output_dir=tempfile.mkdtemp(dir=workdir), batch_size=16, num_iterations=20,
                             num_epochs=1, seed=seed, report_to="none", show_progress_bar=False, save_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=train.select_columns(["text", "label"]))
    trainer.train()
    pred = np.asarray(model.predict(list(test["text"]), batch_size=128))
    return float((pred == np.asarray(list(test["label"]))).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="13,21,42,87,100")
    ap.add_argument("--ablations", default="", help="comma-separated: no_auto_prompt,joint,fgm (or all)")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--results", help="append each seed's results to this JSON Lines file as they come")
    ap.add_argument("--report", nargs="+", metavar="JSONL",
                    help="print the table from result files of earlier runs (e.g. seeds split over processes)")
    args = ap.parse_args()
    if args.report:
        return print_table([json.loads(l) for f in args.report for l in open(f) if l.strip()])
    seeds = [int(s) for s in args.seeds.split(",")]
    ablations = {"no_auto_prompt", "joint", "fgm"} if args.ablations == "all" else set(filter(None, args.ablations.split(",")))

    from autogpt_jax.config import load_config
    from autogpt_jax.data import fewshot, sources
    from autogpt_jax.models import hf

    cfg = load_config(["--config_path", "configs/sentiment_mr.yaml"])
    rows: list[dict] = []
    row: dict = {}

    def add(name, value, seconds):
        row[name] = (value, seconds)

    try:
        import setfit  # noqa: F401

        setfit_ok, setfit_note = not args.skip_torch, f"SetFit {setfit.__version__} (pip install setfit; not an extra)"
    except ImportError:
        setfit_ok, setfit_note = False, "SetFit: not installed here (not run); pip install setfit"
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
            fixed = ["--prompt.template", "{text} It was {mask}.", "--prompt.label_words", "terrible|great"]
            for key, name, extra in (("no_auto_prompt", "ablation: no auto prompt (fixed template, rule words)", fixed),
                                     ("joint", "ablation: + joint loss λ=0.5", ["--finetune.mlm_weight", "0.5"]),
                                     ("fgm", "ablation: + FGM ε=1", ["--finetune.fgm_epsilon", "1.0"])):
                if key in ablations:
                    t = time.perf_counter()
                    r = run_ours(seed, ["--eval.compare", "false", *extra], work)
                    add(name, r["seeds"][0]["test"]["accuracy"], time.perf_counter() - t)
            train, dev = fewshot.fewshot_split(mr["train"], cfg.data.k_shot, seed)
            t = time.perf_counter()
            from sklearn.linear_model import LogisticRegression

            probe = LogisticRegression(max_iter=2000).fit(embed(lm, tok, train["text"]), np.asarray(list(train["label"])))
            add("linear probe (frozen MiniLM)", float(probe.score(test_x, test_y)), time.perf_counter() - t)
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


def print_table(rows: list[dict]):
    names: list[str] = []
    for r in rows:
        names += [k for k in r["results"] if k not in names]
    seeds = [r["seed"] for r in rows]
    print(f"\nMR, K={rows[0]['k_shot']}, seeds {seeds}, test = 2,000 fixed reviews; accuracy % mean ± std (n seeds), "
          "wall time summed over seeds")
    w = max(len(k) for k in names)
    for k in names:
        vals = [r["results"][k] for r in rows if k in r["results"]]
        print(f"  {k:<{w}}  {mean_std([v for v, _ in vals])} (n={len(vals)})   ({sum(t for _, t in vals):.0f} s)")
    print(rows[0]["setfit"])


if __name__ == "__main__":
    main()
