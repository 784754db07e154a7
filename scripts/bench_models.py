"""Forward throughput of our Flax models against PyTorch transformers, same weights, same run.

BERT (default): forward tokens/s, ending with ``ratio <ours/PyTorch>``. A decoder (``--model
smollm2-135m`` or a Llama/GPT-2 directory): forward tokens/s, and greedy generation tokens/s
(batch ``--gen-batch``, a ``--seq``-token prompt, ``--new`` new tokens, KV cache, no early stop:
ours jit-compiled with a fixed-size cache, PyTorch ``generate`` with its dynamic cache).

    python scripts/bench_models.py [--model minilm-l6] [--batch 32] [--seq 64] [--iters 20]
    python scripts/bench_models.py --model smollm2-135m --batch 8 --seq 64 [--new 32] [--gen-batch 1]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogpt_jax.models import load_model
from autogpt_jax.models.build import is_decoder
from autogpt_jax.models.generation import generate


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
    ap.add_argument("--new", type=int, default=32, help="decoders: new tokens per generation")
    ap.add_argument("--gen-batch", type=int, default=1, help="decoders: prompts per generation call")
    args = ap.parse_args()

    import torch
    from transformers import AutoModel

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    lm = load_model(args.model, dtype=jnp.dtype(args.dtype))
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, lm.config.vocab_size, size=(args.batch, args.seq)).astype(np.int32)
    mask = np.ones_like(ids)
    tokens = ids.size

    graphdef, state = nnx.split(lm.model)
    if is_decoder(lm.model):
        return decoder(args, lm, ids, mask, threads)

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


def decoder(args, lm, ids, mask, threads):
    import torch
    from transformers import AutoModelForCausalLM

    graphdef, state = nnx.split(lm.model)

    @jax.jit
    def forward(state, ids, mask):  # hidden states and the next-token logits of the last position
        m = nnx.merge(graphdef, state)
        h, _ = m(ids, mask)
        return m.logits(h[:, -1])

    jids, jmask = jnp.asarray(ids), jnp.asarray(mask)
    ours_s = timeit(lambda: forward(state, jids, jmask).block_until_ready(), args.iters)
    path = lm.path
    kw = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
    pt = AutoModelForCausalLM.from_pretrained(str(path.parent if kw else path), dtype=torch.float32, **kw).eval()
    tids, tmask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)

    def pt_forward():
        with torch.inference_mode():
            pt(input_ids=tids, attention_mask=tmask, logits_to_keep=1)

    pt_s = timeit(pt_forward, args.iters)
    gb = args.gen_batch
    gids = ids[:gb]
    gen_iters = max(2, args.iters // 5)
    ours_g = timeit(lambda: generate(lm.model, gids, max_new_tokens=args.new).block_until_ready(), gen_iters, 1)

    def pt_gen():
        with torch.inference_mode():
            pt.generate(torch.tensor(gids, dtype=torch.long), attention_mask=torch.ones(gids.shape, dtype=torch.long),
                        max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, pad_token_id=0)

    pt_g = timeit(pt_gen, gen_iters, 1)
    tokens = ids.size
    print(f"device: {jax.devices()[0].platform} x{jax.device_count()}, torch threads: {threads}")
    print(f"decoder {args.model} ({lm.config.num_layers} layers, {lm.config.hidden_size} wide), {args.dtype}:")
    print(f"  forward batch {args.batch} x {args.seq}: ours {tokens / ours_s:10,.0f} tokens/s, "
          f"PyTorch {tokens / pt_s:10,.0f} tokens/s  (ratio {pt_s / ours_s:.2f})")
    print(f"  greedy generation, batch {gb}, {args.seq}-token prompt, {args.new} new tokens: ours "
          f"{gb * args.new / ours_g:8,.1f} tokens/s, PyTorch {gb * args.new / pt_g:8,.1f} tokens/s  "
          f"(ratio {pt_g / ours_g:.2f})")


if __name__ == "__main__":
    main()
