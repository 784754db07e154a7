"""``python -m autogpt_jax.predict --model_dir runs/x/export (--text "..." | --input_file F) [--output_file F]``

Writes JSON Lines, one object per input in input order: ``label`` and ``probabilities``
(label → probability). Inputs are batched and compiled once per length bucket. An export with a
hand-over calibration adds ``confidence`` and ``handover``; a customer-service export (a run with
the retrieval stage) answers each question: ``intent``, ``confidence``, ``handover`` with its
``reason``, and ``answers`` (the top answers with their scores).
"""

from __future__ import annotations

import argparse
import json
import sys

from autogpt_jax.data.files import read_table
from autogpt_jax.errors import AutoGPTJaxError
from autogpt_jax.export_format import load_assistant, load_classifier, read_meta
from autogpt_jax.inference import predict_records
from autogpt_jax.training.compilation import OFF_HELP, enable_cache


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autogpt_jax.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", required=True, help="an export/ directory written by autogpt_jax.train")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text to classify (repeatable)")
    src.add_argument("--input_file", help="CSV or JSONL with a `text` column")
    ap.add_argument("--output_file", help="write JSON Lines here instead of stdout")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--no_compile_cache", action="store_true", help=OFF_HELP)
    args = ap.parse_args(argv)
    enable_cache(not args.no_compile_cache)
    try:
        texts = args.text if args.text else [str(r["text"]) for r in read_table(args.input_file)]
        if read_meta(args.model_dir).get("retriever"):
            records = load_assistant(args.model_dir).answer(texts, args.batch_size)
        else:
            records = predict_records(load_classifier(args.model_dir), texts, args.batch_size,
                                      progress="predict" if len(texts) > args.batch_size else None)
    except AutoGPTJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = open(args.output_file, "w") if args.output_file else sys.stdout
    try:
        for r in records:
            out.write(json.dumps(r) + "\n")
    finally:
        if args.output_file:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
