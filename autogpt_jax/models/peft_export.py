"""PEFT exports: an unmerged LoRA adapter in the PEFT library's layout, and the parameters of the
methods that change the architecture (adapters, prefixes, prompts) as a flat safetensors file.
Always written and read with per-layer names, whether the model's layers are scanned or not."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogpt_jax.config import PeftConfig
from autogpt_jax.models import hf
from autogpt_jax.models.peft import PeftParam, target_denses
from autogpt_jax.models.scan import unstacked


def save_lora_adapter(model, out_dir: str | Path, cfg: PeftConfig, base_model: str, task_type: str | None = None) -> Path:
    """An unmerged LoRA export in the PEFT library's layout: ``adapter_config.json`` and
    ``adapter_model.safetensors`` (keys ``base_model.model.<HF module>.lora_A.weight``)."""
    with unstacked(model):  # per-layer names, scanned or not
        return _save_lora_adapter(model, out_dir, cfg, base_model, task_type)


def _save_lora_adapter(model, out_dir: str | Path, cfg: PeftConfig, base_model: str, task_type: str | None = None) -> Path:
    from safetensors.numpy import save_file

    if cfg.method != "lora":
        raise ValueError("the PEFT-library export is written for LoRA only")
    arch = model.arch
    if arch == "gpt2":
        raise ValueError("the PEFT-library export is written for BERT- and Llama-family models (GPT-2 fuses q/k/v)")
    architecture = hf.default_architecture(model)
    if arch == "bert":
        prefix = "" if architecture == "BertModel" else "bert."
        layers = "encoder.layer"
        hf_module = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                     "out": "attention.output.dense", "intermediate": "intermediate.dense", "output": "output.dense"}
    else:
        prefix, layers = "model.", "layers"
        hf_module = {"query": "self_attn.q_proj", "key": "self_attn.k_proj", "value": "self_attn.v_proj",
                     "out": "self_attn.o_proj", "gate": "mlp.gate_proj", "intermediate": "mlp.up_proj",
                     "output": "mlp.down_proj"}
        task_type = task_type or "CAUSAL_LM"
    tensors: dict[str, np.ndarray] = {}
    for path, d in target_denses(model, cfg.target_list):
        i, t = path.split(".")[1], path.split(".")[-1]
        key = f"base_model.model.{prefix}{layers}.{i}.{hf_module[t]}"
        tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(np.asarray(jax.device_get(d.lora_a[...]), np.float32).T)
        tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(np.asarray(jax.device_get(d.lora_b[...]), np.float32).T)
    out = Path(out_dir)
    if jax.process_index() != 0:
        return out
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    # A regex, which PEFT matches against the whole module name: as a plain suffix, "output.dense"
    # would also catch attention.output.dense.
    targets = r".*" + re.escape(layers) + r"\.\d+\.(" + "|".join(re.escape(hf_module[t]) for t in cfg.target_list) + ")"
    conf = {"peft_type": "LORA", "base_model_name_or_path": base_model, "r": cfg.rank, "lora_alpha": cfg.alpha,
            "lora_dropout": cfg.dropout, "target_modules": targets, "bias": "none", "fan_in_fan_out": False,
            "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
            "task_type": task_type}
    (out / "adapter_config.json").write_text(json.dumps(conf, indent=2) + "\n")
    return out


def save_params(model, path: str | Path) -> None:
    """The PEFT parameters alone (flat paths), for methods that change the architecture."""
    with unstacked(model):  # per-layer names, scanned or not
        return _save_params(model, path)


def _save_params(model, path: str | Path) -> None:
    from safetensors.numpy import save_file

    flat = {".".join(str(k) for k in p): np.asarray(jax.device_get(v.get_value()), np.float32)
            for p, v in nnx.to_flat_state(nnx.state(model, PeftParam))}
    if jax.process_index() == 0:
        save_file(flat, str(path), metadata={"format": "autogpt_jax-peft"})


def load_params(model, path: str | Path) -> None:
    """Fill the PEFT parameters that ``apply`` attached from ``save_params``'s file; names and
    shapes must match."""
    with unstacked(model):  # per-layer names, scanned or not
        return _load_params(model, path)


def _load_params(model, path: str | Path) -> None:
    from safetensors.numpy import load_file

    saved = load_file(str(path))
    state = nnx.state(model, PeftParam)
    flat = dict(nnx.to_flat_state(state))
    want = {".".join(str(k) for k in p): p for p in flat}
    if set(saved) != set(want):
        raise ValueError(f"{path}: PEFT parameters {sorted(set(saved) ^ set(want))[:5]} do not match the configuration")
    for name, p in want.items():
        v = flat[p]
        if tuple(saved[name].shape) != tuple(v.get_value().shape):
            raise ValueError(f"{path}: {name} has shape {saved[name].shape}, the model wants {v.get_value().shape}")
        v.set_value(jnp.asarray(saved[name], v.get_value().dtype))
    nnx.update(model, nnx.from_flat_state(flat))
