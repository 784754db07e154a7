"""MLM training throughput: our jit-compiled step against PyTorch transformers, same run.

Ours: masked-position-only MLM loss, AdamW, float32 (or --dtype bfloat16).
PyTorch: BertForMaskedLM with its full-vocabulary loss, torch.optim.AdamW, all CPU threads.
Ends with ``ratio <ours/PyTorch>``. With an accelerator, ``--shape bert-base --dtype bfloat16
--batch 256 --seq 128 --skip-torch`` prints tokens/s and model-FLOPs utilisation (MFU).

    python scripts/bench_train.py [--shape minilm|bert-base|tiny] [--batch 32] [--seq 64] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogpt_jax.config import MeshConfig, OptimConfig
from autogpt_jax.data.masking import mask_tokens, num_slots
from autogpt_jax.models.bert import Bert, BertConfig
from autogpt_jax.training import objectives
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.steps import Trainer

SHAPES = {
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512),
    "minilm": dict(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
}
# Dense bf16 peak FLOP/s per device, for MFU.
PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12, "TPU v5": 197e12}


def model_flops_per_token(h: int, layers: int, inter: int, seq: int, vocab: int, mask_rate: float) -> float:
    """Training FLOPs per token (forward + backward = 3 × forward) of what our step computes."""
    per_layer = 2 * (4 * h * h + 2 * h * inter) + 2 * 2 * seq * h
    head = mask_rate * 2 * (h * h + h * vocab)
    return 3 * (layers * per_layer + head)


def make_batch(rng, batch, seq, vocab, rate, mask_id):
    ids = rng.integers(1000, vocab, size=(batch, seq)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    maskable = np.ones_like(ids, bool)
    maskable[:, [0, -1]] = False
    out = mask_tokens(ids, maskable, rng, rate=rate, mask_id=mask_id, vocab_size=vocab,
                      num_predictions=num_slots(seq, rate))
    out["attention_mask"] = np.ones_like(ids)
    return out


def bench_ours(args, cfg_kw, vocab):
    mesh = shd.make_mesh(MeshConfig())
    cfg = BertConfig(vocab_size=vocab, max_position_embeddings=max(512, args.seq), hidden_dropout=args.dropout,
                     attention_dropout=args.dropout, **cfg_kw)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    model = Bert(cfg, rngs=nnx.Rngs(0), dtype=dtype)
    trainer, state = Trainer.create(model, objectives.mlm_loss, OptimConfig(learning_rate=1e-4), 1000, mesh)
    rng = np.random.default_rng(0)
    batches = [shd.put_batch(make_batch(rng, args.batch, args.seq, vocab, 0.15, 103), mesh) for _ in range(4)]
    key = jax.random.key(0)
    for i in range(3):
        state, m = trainer.train_step(state, batches[i % 4], key)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for i in range(args.steps):
        state, m = trainer.train_step(state, batches[i % 4], key)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t) / args.steps
    return dt, float(m["loss"])


def bench_torch(args, cfg_kw, vocab):
    import torch
    from transformers import BertConfig as TorchBertConfig
    from transformers import BertForMaskedLM

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    cfg = TorchBertConfig(vocab_size=vocab, hidden_size=cfg_kw["hidden_size"], num_hidden_layers=cfg_kw["num_layers"],
                     num_attention_heads=cfg_kw["num_heads"], intermediate_size=cfg_kw["intermediate_size"],
                     max_position_embeddings=max(512, args.seq))
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = args.dropout
    model = BertForMaskedLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(4):
        b = make_batch(rng, args.batch, args.seq, vocab, 0.15, 103)
        labels = np.full(b["input_ids"].shape, -100, np.int64)
        for r in range(args.batch):
            n = int(b["mlm_weights"][r].sum())
            labels[r, b["mlm_positions"][r, :n]] = b["mlm_labels"][r, :n]
        batches.append(dict(input_ids=torch.tensor(b["input_ids"], dtype=torch.long),
                            attention_mask=torch.tensor(b["attention_mask"]), labels=torch.tensor(labels)))

    def step(b):
        opt.zero_grad(set_to_none=True)
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach()

    for i in range(2):
        step(batches[i % 4])
    t = time.perf_counter()
    for i in range(args.steps):
        loss = step(batches[i % 4])
    dt = (time.perf_counter() - t) / args.steps
    return dt, float(loss)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="minilm", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout, both models")
    ap.add_argument("--skip-torch", action="store_true", help="only our step (accelerator runs)")
    args = ap.parse_args()

    cfg_kw = SHAPES[args.shape]
    tokens = args.batch * args.seq
    dev = jax.devices()[0]
    print(f"device: {dev.platform} {getattr(dev, 'device_kind', '')} x{jax.device_count()}; shape {args.shape}, "
          f"batch {args.batch} x {args.seq}, 15% masking, {args.dtype}")
    ours_dt, ours_loss = bench_ours(args, cfg_kw, args.vocab)
    flops = model_flops_per_token(cfg_kw["hidden_size"], cfg_kw["num_layers"], cfg_kw["intermediate_size"],
                                  args.seq, args.vocab, 0.15) * tokens
    print(f"  ours (Flax NNX, masked-only MLM loss): {tokens / ours_dt:10,.0f} tokens/s  "
          f"({ours_dt * 1e3:.0f} ms/step, loss {ours_loss:.3f}, {flops / ours_dt / 1e12:.2f} TFLOP/s)")
    peak = next((v for k, v in PEAK.items() if k in getattr(dev, "device_kind", "")), None)
    if peak and args.dtype == "bfloat16":
        print(f"  MFU: {flops / ours_dt / peak * 100:.1f}% of {peak / 1e12:.0f} TFLOP/s")
    if args.skip_torch:
        return
    pt_dt, pt_loss = bench_torch(args, cfg_kw, args.vocab)
    print(f"  PyTorch BertForMaskedLM (full-vocab loss, AdamW, {os.cpu_count()} threads): "
          f"{tokens / pt_dt:10,.0f} tokens/s  ({pt_dt * 1e3:.0f} ms/step, loss {pt_loss:.3f})")
    print(f"ratio {pt_dt / ours_dt:.2f}")


if __name__ == "__main__":
    main()
