"""Forward throughput of our Flax BERT against PyTorch transformers, same weights, same run.

Prints tokens/s for each and ends with ``ratio <ours/PyTorch>``.
    python scripts/bench_models.py [--model minilm-l6] [--batch 32] [--seq 64] [--iters 20]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def timeit(fn, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-l6", help="name_or_path of a BERT checkpoint")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx
    from transformers import AutoModel

    from autogpt_jax.models import load_model

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    lm = load_model(args.model, dtype=jnp.dtype(args.dtype))
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, lm.config.vocab_size, size=(args.batch, args.seq)).astype(np.int32)
    mask = np.ones_like(ids)
    tokens = ids.size

    graphdef, state = nnx.split(lm.model)

    @jax.jit
    def forward(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask)

    jids, jmask = jnp.asarray(ids), jnp.asarray(mask)
    ours_s = timeit(lambda: forward(state, jids, jmask).block_until_ready(), args.iters)

    pt = AutoModel.from_pretrained(str(lm.path)).eval()
    tids, tmask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)

    def pt_forward():
        with torch.inference_mode():
            pt(input_ids=tids, attention_mask=tmask)

    pt_s = timeit(pt_forward, args.iters)
    print(f"device: {jax.devices()[0].platform} x{jax.device_count()}, torch threads: {threads}")
    print(f"BERT forward {args.model} batch {args.batch} x {args.seq} ({args.dtype}):")
    print(f"  ours (Flax NNX, jit): {tokens / ours_s:12,.0f} tokens/s  ({ours_s * 1e3:.1f} ms/batch)")
    print(f"  PyTorch transformers: {tokens / pt_s:12,.0f} tokens/s  ({pt_s * 1e3:.1f} ms/batch)")
    print(f"ratio {pt_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
