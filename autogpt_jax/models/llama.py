"""Llama-family decoders in Flax NNX (Llama, SmolLM2, Qwen2-style): RMSNorm, rotary embeddings,
SwiGLU feed-forward, grouped-query attention, tied or untied LM head and a fixed-size KV cache.

Parameter names follow the other models so PEFT targets mean the same everywhere: attention
``query/key/value/out``; feed-forward ``gate`` (gate_proj), ``intermediate`` (up_proj) and
``output`` (down_proj).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from autogpt_jax.models.layers import (Attention, Cache, RMSNorm, activation, advance_cache, decoder_inputs, dense,
                                       embed, rope_tables)
from autogpt_jax.models.scan import is_stacked, layer_keys, run_layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    head_dim: int | None = None  # None ⇒ hidden / heads
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    hidden_act: str = "silu"
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # Qwen2 has biases on q/k/v
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    model_type: str = "llama"

    def __post_init__(self):
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}")
        if self.model_type not in ("llama", "qwen2", "mistral"):
            raise ValueError(f"model_type {self.model_type!r} is not a supported Llama-family type")
        activation(self.hidden_act)

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.dim_per_head

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> "LlamaConfig":
        scaling = hf.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise ValueError(f"rope_scaling {scaling} is not supported (only plain rotary embeddings)")
        if hf.get("mlp_bias"):
            raise ValueError("mlp_bias=true is not supported")
        mt = hf.get("model_type", "llama")
        # Qwen2 switches its window on with use_sliding_window; Mistral has no switch and applies
        # sliding_window whenever it is set. A window as long as the context changes nothing.
        window = hf.get("sliding_window")
        if window and (hf.get("use_sliding_window") or mt == "mistral") and \
                window < hf.get("max_position_embeddings", float("inf")):
            raise ValueError(f"sliding-window attention (sliding_window={window}) is not supported")
        rope = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        kw = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope),
            hidden_act=hf.get("hidden_act", "silu"),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", mt == "qwen2")),
            attention_dropout=hf.get("attention_dropout", 0.0),
            initializer_range=hf.get("initializer_range", 0.02),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id") if not isinstance(hf.get("eos_token_id"), list) else hf["eos_token_id"][0],
            model_type=mt,
        )
        if kw["head_dim"] == kw["hidden_size"] // kw["num_heads"]:
            kw["head_dim"] = None
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        out = {
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.dim_per_head,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "hidden_act": self.hidden_act,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": self.attention_dropout,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }
        if self.model_type != "qwen2":
            out["attention_bias"] = self.attention_bias
            out["mlp_bias"] = False
        return out


class LlamaBlock(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        std = cfg.initializer_range
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.attention = Attention(cfg.hidden_size, cfg.num_heads, dropout=cfg.attention_dropout, std=std,
                                   num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, use_bias=cfg.attention_bias,
                                   **kw)
        if cfg.attention_bias and cfg.model_type == "qwen2":  # Qwen2: biases on q/k/v, none on o_proj
            self.attention.out.bias = None
        self.post_attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.gate = dense(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), std=std, use_bias=False, **kw)
        self.intermediate = dense(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), std=std, use_bias=False, **kw)
        self.output = dense(cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), std=std, use_bias=False, **kw)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x_BxLxD, mask_BxLxS, rope, *, cache=None, cache_index=None, rngs=None):
        a_BxLxD, cache = self.attention(self.input_norm(x_BxLxD), mask_BxLxS, cache=cache, cache_index=cache_index,
                                        rope=rope, rngs=rngs)
        if getattr(self, "attention_adapter", None) is not None:  # Houlsby adapters (models/peft.py)
            a_BxLxD = self.attention_adapter(a_BxLxD)
        x_BxLxD = x_BxLxD + a_BxLxD
        h_BxLxD = self.post_attention_norm(x_BxLxD)
        m_BxLxD = self.output(self.act(self.gate(h_BxLxD, rngs)) * self.intermediate(h_BxLxD, rngs), rngs)
        if getattr(self, "output_adapter", None) is not None:
            m_BxLxD = self.output_adapter(m_BxLxD)
        return x_BxLxD + m_BxLxD, cache


class Llama(nnx.Module):
    # The family, decided here once: stage code asks ``kind`` (encoder | decoder), never isinstance.
    kind = "decoder"
    arch = "llama"

    @property
    def max_positions(self) -> int:
        return self.config.max_position_embeddings

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.config = cfg
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.embed_tokens = embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), std=cfg.initializer_range, **kw)
        self.layers = nnx.List([LlamaBlock(cfg, **kw) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.lm_head = None if cfg.tie_word_embeddings else dense(
            cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), std=cfg.initializer_range, use_bias=False, **kw)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> Cache:
        if max_len > self.config.max_position_embeddings:
            raise ValueError(f"cache length {max_len} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        return Cache.empty(len(self.layers), batch, self.config.num_kv_heads, max_len, self.config.dim_per_head,
                           dtype or self.dtype, stacked=is_stacked(self))

    def __call__(self, input_ids_BxL, attention_mask_BxL=None, *, cache: Cache | None = None,
                 inputs_embeds_BxLxD=None, rngs: nnx.Rngs | None = None, positions_BxL: Array | None = None,
                 block_mask_BxLxL: Array | None = None) -> tuple[Array, Cache | None]:
        """Final hidden states (after the last RMSNorm) and the updated cache. Positions come from
        the attention mask (cumsum − 1), so left-padded rows get the positions of unpadded ones."""
        B, L = input_ids_BxL.shape
        if attention_mask_BxL is None:
            attention_mask_BxL = jnp.ones((B, L), jnp.int32)
        attention_mask_BxL = attention_mask_BxL.astype(jnp.int32)
        pos_BxL, mask_BxLxS, index, valid_BxS = decoder_inputs(attention_mask_BxL, cache, positions_BxL,
                                                                  block_mask_BxLxL)
        rope = rope_tables(pos_BxL, self.config.dim_per_head, self.config.rope_theta)
        x_BxLxD = self.embed_tokens(input_ids_BxL) if inputs_embeds_BxLxD is None else inputs_embeds_BxLxD

        def step(block, x_BxLxD, layer_cache, layer_rngs):
            return block(x_BxLxD, mask_BxLxS, rope, cache=layer_cache, cache_index=index, rngs=layer_rngs)

        x_BxLxD, new_layers = run_layers(self.layers, step, x_BxLxD, None if cache is None else cache.layers,
                                         keys=layer_keys(rngs, len(self.layers)))
        h_BxLxD = self.norm(x_BxLxD)
        if cache is not None:
            cache = advance_cache(cache, new_layers, valid_BxS, attention_mask_BxL)
        return h_BxLxD, cache

    def logits(self, h_NxD: Array, vocab_ids=None) -> Array:
        """LM logits (float32) over all or the given vocab rows (tied embedding or lm_head)."""
        w_VxD = self.embed_tokens.embedding[...] if self.lm_head is None else self.lm_head.kernel[...].T
        if vocab_ids is not None:
            w_VxD = jnp.take(w_VxD, vocab_ids, axis=0)
        return jnp.einsum("...d,vd->...v", h_NxD, w_VxD.astype(h_NxD.dtype), preferred_element_type=jnp.float32)
