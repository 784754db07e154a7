"""The decoder rows of scripts/bench_fewshot.py (--decoder): SmolLM2-135M-Instruct zero-shot,
prompt LoRA and in-context demonstrations (ours, through ``run_pipeline``) against PyTorch
transformers + peft on the same GGUF weights and token ids, and the speed pass (train step and
test sentences/s, ours and PyTorch's)."""

from __future__ import annotations

import json
import tempfile
import time

import jax
import numpy as np

from autogpt_jax.config import load_config
from autogpt_jax.data import fewshot, sources
from autogpt_jax.evaluation import sentences_per_s
from autogpt_jax.inference import Classifier, prompt_inputs, word_table
from autogpt_jax.models import hf
from autogpt_jax.pipeline import make_context, run_pipeline
from autogpt_jax.prompts.search import parse_label_words
from autogpt_jax.prompts.templates import Template, fill_task, rule_verbalizer
from autogpt_jax.stages.finetune import example_batches, with_peft
from autogpt_jax.training import objectives
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.steps import Trainer
from fewshot_peers import TorchDecoder

DECODER_CFG = "configs/sentiment_mr_decoder.yaml"
QUIET = ["--logging.progress", "false", "--logging.tensorboard", "false"]


MR_CLASSES = ("negative", "positive")


def decoder_inputs(cfg, tok, model, texts, classes=MR_CLASSES):
    """Token ids of the prompted texts (the whole sequence) and the label words' first tokens
    (``classes``: the task's class names, in label order)."""
    verb = parse_label_words(cfg.prompt.label_words, list(classes)) or rule_verbalizer(list(classes), literal=True)
    template = Template(fill_task(cfg.prompt.template, verb, cfg.task.description))
    seqs, pos = template.encode(tok, list(texts), cfg.prompt.max_length, causal=True)
    ids, _ = word_table(tok, model, verb, template)  # C × W × T; the label words here are single tokens
    return seqs, pos, ids[:, 0, 0]


def peer_lora(tdec, cfg, tok, model, train, dev, test_seqs, test_pos, test_y, seed: int,
              classes=MR_CLASSES) -> float:
    """Test accuracy of the PyTorch + peft LoRA peer: ``cfg``'s recipe and lr grid, best on dev."""
    tr = decoder_inputs(cfg, tok, model, train["text"], classes)[:2] + (np.asarray(list(train["label"])),)
    dv = decoder_inputs(cfg, tok, model, dev["text"], classes)[:2] + (np.asarray(list(dev["label"])),)
    lora, _ = tdec.lora(tr, dv, cfg.finetune.lr_grid, cfg.finetune.steps, cfg.finetune.batch_size, seed,
                        cfg.finetune.eval_every)
    return float((tdec.predict(lora, test_seqs, test_pos) == test_y).mean())


def decoder_speed(ctx, tdec, train, test_texts):
    """Train-step seconds (batch 8, LoRA, mean over the same 12 batches after a pass that compiles)
    and test sentences/s, ours and PyTorch's."""
    cfg, run_model, tok, mesh = ctx.cfg, ctx.backbone.model, ctx.tokenizer, ctx.mesh
    verb = parse_label_words(cfg.prompt.label_words, list(MR_CLASSES)) or rule_verbalizer(list(MR_CLASSES), literal=True)
    template = Template(fill_task(cfg.prompt.template, verb, cfg.task.description))
    ids, wts = word_table(tok, run_model, verb, template)
    texts, ys = list(train["text"]), np.asarray(list(train["label"]), np.int32)
    seqs, mpos, prefix = prompt_inputs(tok, run_model, template, texts, cfg.prompt.max_length)
    model, kw = with_peft(ctx, run_model, objectives.make_cloze_loss(ids, wts, prefix), 40, head_paths=())
    trainer, state = Trainer.create(model, kw.pop("loss"), cfg.finetune.optim, 40, mesh, **kw)
    batches = example_batches(ctx, run_model, seqs, {"mask_pos": mpos, "labels": ys}, 8, 0, ids)  # packed rows
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
    clf = Classifier(run_model, tok, list(MR_CLASSES), "prompt", template, ids, wts,
                     max_length=cfg.prompt.max_length)
    ours_sps = sentences_per_s(clf, test_texts, cfg.eval.batch_size)  # after a pass that compiles every bucket
    full, pos, _ = decoder_inputs(cfg, tok, run_model, texts)
    torch_step = tdec.step_seconds(full, pos, ys, steps)
    tfull, tpos, _ = decoder_inputs(cfg, tok, run_model, test_texts)
    t0 = time.perf_counter()
    tdec.predict(tdec.base, tfull, tpos, batch=cfg.eval.batch_size)
    torch_sps = len(test_texts) / (time.perf_counter() - t0)
    return {"ours_step_s": ours_step, "torch_step_s": torch_step, "ours_test_sentences_per_s": ours_sps,
            "torch_test_sentences_per_s": torch_sps}


def main_decoder(args):
    seeds = [int(s) for s in args.seeds.split(",")]
    mr = sources.load_dataset("mr")
    test_y = np.asarray(list(mr["test"]["label"]))

    def record(row):
        print(json.dumps(row), flush=True)
        if args.results:
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")

    with tempfile.TemporaryDirectory() as work:
        # The decoder as the pipeline builds it (its mesh, tokenizer and weights), for the inputs
        # of the PyTorch peer and for the speed pass; its metrics go to a scratch directory.
        ctx = make_context(load_config(["--config_path", DECODER_CFG, "--output_dir", tempfile.mkdtemp(dir=work),
                                        *QUIET]))
        try:
            cfg, tok, model = ctx.cfg, ctx.tokenizer, ctx.backbone.model
            test_seqs, test_pos, label_ids = decoder_inputs(cfg, tok, model, mr["test"]["text"])
            tdec = TorchDecoder(hf.resolve(cfg.model.name_or_path), label_ids)
            if not args.skip_speed:
                train, _ = fewshot.fewshot_split(mr["train"], cfg.data.k_shot, seeds[0])
                record({"decoder_speed": decoder_speed(ctx, tdec, train, list(mr["test"]["text"])[:256])})
                if args.speed_only:
                    return
            if not args.skip_zero_shot:
                # Zero-shot does not depend on the split seed (the test set is fixed): once.
                t = time.perf_counter()
                zs = run_pipeline(load_config(["--config_path", DECODER_CFG, "--output_dir", tempfile.mkdtemp(dir=work),
                                               "--stages", "prompt,evaluate", "--eval.compare", "false", *QUIET]))
                row = {"decoder zero-shot (ours)": (zs["seeds"][0]["test"]["accuracy"], time.perf_counter() - t)}
                t = time.perf_counter()
                acc = float((tdec.predict(tdec.base, test_seqs, test_pos) == test_y).mean())
                row["decoder zero-shot (PyTorch)"] = (acc, time.perf_counter() - t)
                record({"seed": None, "k_shot": cfg.data.k_shot, "results": row})
            seeds_only(seeds, cfg, mr, tok, model, tdec, test_seqs, test_pos, test_y, work, args, record)
        finally:
            ctx.logger.close()


def seeds_only(seeds, cfg, mr, tok, model, tdec, test_seqs, test_pos, test_y, work, args, record):
    for seed in seeds:
        row = {}
        base = ["--config_path", DECODER_CFG, "--data.split_seed", str(seed), "--eval.compare", "false",
                "--stages", "prompt,finetune,evaluate", *QUIET]
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
        acc = peer_lora(tdec, cfg, tok, model, train, dev, test_seqs, test_pos, test_y, seed)
        row["decoder PyTorch + PEFT LoRA (same recipe and grid)"] = (acc, time.perf_counter() - t)
        record({"seed": seed, "k_shot": cfg.data.k_shot, "results": row})
