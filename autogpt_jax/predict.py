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
from pathlib import Path

from autogpt_jax.errors import AutoGPTJaxError


class PredictError(AutoGPTJaxError, ValueError):
    pass


def load_classifier(model_dir: str | Path):
    """The exported model with its task metadata (labels, template, label words, head)."""
    from autogpt_jax.inference import Classifier, word_table
    from autogpt_jax.models import hf
    from autogpt_jax.prompts.templates import Template, Verbalizer

    d = Path(model_dir)
    meta_path = d / "autogpt_jax.json"
    if not d.is_dir():
        raise PredictError(f"--model_dir {d}: no such directory")
    if not meta_path.exists():
        raise PredictError(f"{d}: no autogpt_jax.json; pass the export/ directory of a run with a task "
                           "(stages ...,finetune,export)")
    meta = json.loads(meta_path.read_text())
    if not meta.get("labels"):
        raise PredictError(f"{meta_path}: this export has no task (it came from a pretraining-only run)")
    labels = meta["labels"]
    mode = meta["mode"]
    lm = hf.load_model(d, num_labels=len(labels) if mode == "head" else 0)
    tok = lm.tokenizer()
    pm = meta.get("peft")
    if pm and not pm.get("merged", True):  # adapters / prefixes / soft prompts: re-attach, then fill
        import dataclasses

        from autogpt_jax.config import PeftConfig
        from autogpt_jax.models import peft

        fields = {f.name for f in dataclasses.fields(PeftConfig)}
        peft.apply(lm.model, PeftConfig(**{k: v for k, v in pm.items() if k in fields}))
        peft.load_params(lm.model, d / "peft.safetensors")
    ids = wts = template = desc = None
    if mode in ("prompt", "similarity"):
        template = Template(meta["template"]).with_demos(meta.get("demonstrations") or [])
        verb = Verbalizer(tuple(tuple(w) for w in meta["label_words"]))
        if mode == "prompt":
            ids, wts = word_table(tok, lm.model, verb, template)
        else:
            desc = verb.description_table(tok, template)
    elif mode != "head":
        raise PredictError(f"{meta_path}: unknown mode {mode!r} (expected prompt, similarity or head)")
    clf = Classifier(lm.model, tok, labels, mode, template, ids, wts, max_length=meta.get("max_length", 128),
                     pooling=meta.get("pooling", "mean"), label_words=meta.get("label_words"), descriptions=desc,
                     scale=meta.get("similarity_scale") or 20.0)
    if meta.get("handover"):
        from autogpt_jax.handover import Handover

        clf.handover = Handover(**meta["handover"])
    return clf


def predict_records(clf, texts: list[str], batch_size: int = 64) -> list[dict]:
    """One record per text: ``label`` and ``probabilities``; with a hand-over calibration in the
    export, the probabilities are calibrated and ``confidence`` and ``handover`` are added."""
    h = getattr(clf, "handover", None)
    if h is None:
        probs, hand = clf.probabilities(texts, batch_size), None
    else:
        probs, hand = h.decide(clf.logits(texts, batch_size))
    out = []
    for i, p in enumerate(probs):
        r = {"label": clf.labels[int(p.argmax())], "probabilities": {l: float(v) for l, v in zip(clf.labels, p)}}
        if hand is not None:
            r.update(confidence=float(p.max()), handover=bool(hand[i]))
        out.append(r)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autogpt_jax.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", required=True, help="an export/ directory written by autogpt_jax.train")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text to classify (repeatable)")
    src.add_argument("--input_file", help="CSV or JSONL with a `text` column")
    ap.add_argument("--output_file", help="write JSON Lines here instead of stdout")
    ap.add_argument("--batch_size", type=int, default=64)
    args = ap.parse_args(argv)
    try:
        from autogpt_jax.data.sources import read_table

        texts = args.text if args.text else [str(r["text"]) for r in read_table(args.input_file)]
        meta_path = Path(args.model_dir) / "autogpt_jax.json"
        if meta_path.exists() and json.loads(meta_path.read_text()).get("retriever"):
            from autogpt_jax.retrieval import load_assistant

            records = load_assistant(args.model_dir).answer(texts, args.batch_size)
        else:
            records = predict_records(load_classifier(args.model_dir), texts, args.batch_size)
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
