"""The few-shot protocol on MR (K=16 per class, LM-BFF split seeds, the fixed 2,000-review test set):
our pipeline and its baselines on the same splits, in one run. Prints mean ± std per method and wall time.

Methods:
  ours                 configs/sentiment_mr.yaml (auto template, adapt, prompt fine-tuning)
  ours: zero-shot / head FT / prompt FT without adapt   (eval.compare, same splits)
  ablation: no auto prompt (fixed first template), joint loss (λ = 0.5)   [--ablations]
  probe                logistic regression on frozen mean-pooled MiniLM embeddings (scikit-learn)
  torch head FT        PyTorch transformers AutoModelForSequenceClassification, AdamW, same lr grid,
                       best dev checkpoint, same steps and batch size
  SetFit               if the `setfit` package imports (it is not in this project's extras)

    python scripts/bench_fewshot.py [--seeds 13,21,42,87,100] [--ablations] [--skip-torch]
"""

from __future__ import annotations

import argparse
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="13,21,42,87,100")
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    from autogpt_jax.config import load_config
    from autogpt_jax.data import fewshot, sources
    from autogpt_jax.models import hf

    cfg = load_config(["--config_path", "configs/sentiment_mr.yaml"])
    results: dict[str, list[float]] = {}
    times: dict[str, float] = {}

    def add(name, value, seconds):
        results.setdefault(name, []).append(value)
        times[name] = times.get(name, 0.0) + seconds

    mr = sources.load_dataset("mr")
    lm = hf.load_model(cfg.model.name_or_path)
    tok = lm.tokenizer()
    test_x = embed(lm, tok, mr["test"]["text"])
    test_y = np.asarray(list(mr["test"]["label"]))
    with tempfile.TemporaryDirectory() as work:
        for seed in seeds:
            t = time.perf_counter()
            rep = run_ours(seed, [], work)
            dt = time.perf_counter() - t
            s = rep["seeds"][0]
            add("ours: adapt + auto prompt + prompt FT", s["test"]["accuracy"], dt)
            for name, key in (("zero-shot prompt", "zero_shot"), ("zero-shot after adapt", "zero_shot_after_adapt"),
                              ("head FT (ours, JAX)", "head_ft"), ("prompt FT, no adapt", "prompt_ft")):
                if key in s.get("baselines", {}):
                    add(name, s["baselines"][key]["accuracy"], 0.0)
            if args.ablations:
                for name, extra in (("ablation: no auto prompt", ["--stages", "adapt,finetune,evaluate"]),
                                    ("ablation: + joint loss λ=0.5", ["--finetune.mlm_weight", "0.5"])):
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
                a = torch_head_ft(lm.path, train, dev, mr["test"], cfg.finetune.lr_grid, cfg.finetune.steps,
                                  cfg.finetune.batch_size, seed)
                add("PyTorch head FT", a, time.perf_counter() - t)
            print(f"seed {seed}: " + ", ".join(f"{k} {100 * v[-1]:.1f}" for k, v in results.items()), flush=True)
    try:
        import setfit  # noqa: F401

        setfit_note = "SetFit: installed but not wired into this script yet"
    except ImportError:
        setfit_note = "SetFit: not installed here (not run)"
    print(f"\nMR, K={cfg.data.k_shot}, seeds {seeds}, test = 2,000 fixed reviews; accuracy % mean ± std")
    w = max(len(k) for k in results)
    for k, v in results.items():
        print(f"  {k:<{w}}  {mean_std(v)}   ({times[k]:.0f} s)")
    print(setfit_note)


if __name__ == "__main__":
    main()
