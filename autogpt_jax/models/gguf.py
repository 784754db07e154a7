"""GGUF files (llama.cpp's format) → a Hugging Face-style config and float32 tensors.

Tensors are dequantised with the ``gguf`` package (F32, F16, BF16, Q4_0, Q4_1, Q8_0) and renamed
to Hugging Face Llama keys, so the same rule table in ``keymaps.py`` loads GGUF files and safetensors
directories. llama.cpp stores the query and key projections permuted for its interleaved rotary
layout; they are permuted back to Hugging Face's half-split layout here (as ``transformers`` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from autogpt_jax.errors import ModelLoadError

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0")
ARCHITECTURES = ("llama", "qwen2")

_LAYER_KEYS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_KEYS = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}


def open_reader(path: Path):
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
    except ImportError:
        raise ModelLoadError(f"{path}: reading GGUF files needs the `gguf` package (pip install gguf)") from None

    class _CheckedReader(GGUFReader):
        """Names the tensor (and its type) that a truncated file cuts off, instead of a reshape error."""

        def _build_tensors(self, start_offs, fields):
            size = len(self.data)
            for field in fields:
                _, name_data, _, dims, raw_dtype, offset = field.parts
                name = bytes(name_data).decode("utf-8", "replace")
                try:
                    qtype = GGMLQuantizationType(int(raw_dtype[0]))
                except ValueError:
                    raise ModelLoadError(f"{path}: tensor {name!r} has unknown GGML type id {int(raw_dtype[0])}; "
                                         f"supported: {', '.join(SUPPORTED_TYPES)}") from None
                block, type_size = GGML_QUANT_SIZES[qtype]
                end = int(start_offs + offset[0]) + int(np.prod(dims)) * type_size // block
                if end > size:
                    raise ModelLoadError(f"{path}: tensor {name!r} ({qtype.name}) ends at byte {end:,} but the file "
                                         f"has {size:,} bytes: the file is truncated (re-download it)")
            return super()._build_tensors(start_offs, fields)

    try:
        return _CheckedReader(str(path))
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


def read_config(reader, path: Path) -> dict[str, Any]:
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"{path}: GGUF architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    g = lambda k, d=None: _field(reader, f"{arch}.{k}", d)  # noqa: E731
    n_vocab = g("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    names = {t.name for t in reader.tensors}
    heads = int(g("attention.head_count"))
    hidden = int(g("embedding_length"))
    cfg = {
        "model_type": arch,
        "vocab_size": int(n_vocab),
        "hidden_size": hidden,
        "intermediate_size": int(g("feed_forward_length")),
        "num_hidden_layers": int(g("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(g("attention.head_count_kv", heads)),
        "head_dim": int(g("attention.key_length", hidden // heads)),
        "max_position_embeddings": int(g("context_length", 2048)),
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(g("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "hidden_act": "silu",
    }
    if g("rope.scaling.type") not in (None, "none"):
        raise ModelLoadError(f"{path}: rope scaling {g('rope.scaling.type')!r} is not supported")
    return cfg


def _unpermute(w_OxI: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation (interleaved rotary pairs → half-split halves)."""
    d = w_OxI.shape[0] // heads // 2
    return w_OxI.reshape(heads, d, 2, *w_OxI.shape[1:]).swapaxes(1, 2).reshape(w_OxI.shape)


def read_weights(reader, cfg: dict[str, Any], path: Path, dtype=np.float32) -> dict[str, np.ndarray]:
    """Every tensor, dequantised, in Hugging Face layout and naming (torch Linear: out × in)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    out = {}
    permute = cfg["model_type"] == "llama"
    for t in reader.tensors:
        qtype = t.tensor_type
        if qtype.name not in SUPPORTED_TYPES:
            raise ModelLoadError(f"{path}: tensor {t.name!r} is stored as {qtype.name}, which is not supported; "
                                 f"supported types: {', '.join(SUPPORTED_TYPES)}. Convert the file with llama.cpp's "
                                 "llama-quantize to one of those, or load the safetensors checkpoint instead.")
        if t.name in _GLOBAL_KEYS:
            key = _GLOBAL_KEYS[t.name]
        elif t.name.startswith("blk."):
            _, i, rest = t.name.split(".", 2)
            if rest not in _LAYER_KEYS:
                raise ModelLoadError(f"{path}: tensor {t.name!r} has no Llama counterpart (unexpected for {cfg['model_type']})")
            key = f"model.layers.{i}.{_LAYER_KEYS[rest]}"
        else:
            continue  # e.g. rope_freqs: recomputed from the config
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            arr = np.asarray(t.data, np.float32)
        else:
            arr = dequantize(np.asarray(t.data), qtype)
        arr = arr.reshape(shape).astype(dtype, copy=False)
        if permute and t.name.endswith("attn_q.weight"):
            arr = _unpermute(arr, cfg["num_attention_heads"])
        elif permute and t.name.endswith("attn_k.weight"):
            arr = _unpermute(arr, cfg["num_key_value_heads"])
        out[key] = arr
    return out


def load(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    reader = open_reader(path)
    cfg = read_config(reader, path)
    return cfg, read_weights(reader, cfg, path)


def find(model_dir: Path) -> Path | None:
    """The GGUF file of a directory that has no config.json (or the path itself if it is one)."""
    p = Path(model_dir)
    if p.is_file() and p.suffix == ".gguf":
        return p
    if p.is_dir() and not (p / "config.json").exists():
        files = sorted(p.glob("*.gguf"))
        if len(files) > 1:
            raise ModelLoadError(f"{p}: {len(files)} GGUF files ({', '.join(f.name for f in files)}); pass one file")
        return files[0] if files else None
    return None


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise ModelLoadError(f"{path}: could not build a tokenizer from the GGUF metadata ({type(e).__name__}: {e})") from None
