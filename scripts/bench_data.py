"""Data-layer speed: load a 100k-row CSV (text, label), tokenise it, and draw masked MLM batches.

    python scripts/bench_data.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from autogpt_jax.data import batching, files, sources
from autogpt_jax.models import hf


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    reviews = list(sources.load_dataset("mr")["train"]["text"])
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for i in range(args.rows):
                w.writerow([reviews[int(rng.integers(len(reviews)))], "pos" if i % 2 else "neg"])
        size_mb = path.stat().st_size / 1e6
        t = time.perf_counter()
        ds = files.load_files(str(path))
        load_s = time.perf_counter() - t
    print(f"load {args.rows:,}-row CSV ({size_mb:.1f} MB) into a DatasetDict: {load_s:.2f} s")
    tok = hf.load_tokenizer(hf.resolve("splade-tiny"))
    texts = list(ds["train"]["text"])
    t = time.perf_counter()
    seqs = batching.encode(tok, texts, 128)
    tok_s = time.perf_counter() - t
    n_tok = sum(len(s) for s in seqs)
    print(f"tokenise: {tok_s:.2f} s ({n_tok / tok_s:,.0f} tokens/s); again (memoised): ", end="")
    t = time.perf_counter()
    batching.encode(tok, texts, 128)
    print(f"{time.perf_counter() - t:.3f} s")
    packed = batching.pack(seqs[:20000], 128, style="bert", bos_id=tok.cls_token_id, eos_id=tok.sep_token_id)
    it = batching.PretrainBatches(packed, 32, 0, objective="mlm", tokenizer=tok, masking_mode="whole_word")
    t = time.perf_counter()
    for _ in range(50):
        next(it)
    dt = (time.perf_counter() - t) / 50
    print(f"whole-word MLM batch 32 x 128: {dt * 1e3:.1f} ms ({32 * 128 / dt:,.0f} tokens/s)")


if __name__ == "__main__":
    main()
