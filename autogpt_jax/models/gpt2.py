"""GPT-2 in Flax NNX: pre-LayerNorm decoder, tied LM head, causal mask and a fixed-size KV cache."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from autogpt_jax.models.layers import (Attention, Cache, Dropout, activation, advance_cache, decoder_inputs, dense,
                                       embed, layer_norm)
from autogpt_jax.models.scan import is_stacked, layer_keys, run_layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int | None = None  # None ⇒ 4 × hidden
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu_new"
    resid_dropout: float = 0.1
    embd_dropout: float = 0.1
    attention_dropout: float = 0.1
    initializer_range: float = 0.02
    bos_token_id: int = 50256
    eos_token_id: int = 50256

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        activation(self.hidden_act)

    @property
    def inner(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> "GPT2Config":
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if hf.get(flag):
                raise ValueError(f"GPT-2 option {flag}=true is not supported")
        if not hf.get("scale_attn_weights", True):
            raise ValueError("GPT-2 option scale_attn_weights=false is not supported")
        kw = dict(
            vocab_size=hf["vocab_size"],
            n_positions=hf.get("n_positions", 1024),
            hidden_size=hf["n_embd"],
            num_layers=hf["n_layer"],
            num_heads=hf["n_head"],
            intermediate_size=hf.get("n_inner"),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            hidden_act=hf.get("activation_function", "gelu_new"),
            resid_dropout=hf.get("resid_pdrop", 0.1),
            embd_dropout=hf.get("embd_pdrop", 0.1),
            attention_dropout=hf.get("attn_pdrop", 0.1),
            initializer_range=hf.get("initializer_range", 0.02),
            bos_token_id=hf.get("bos_token_id", 50256),
            eos_token_id=hf.get("eos_token_id", 50256),
        )
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        return {
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_embd": self.hidden_size,
            "n_layer": self.num_layers,
            "n_head": self.num_heads,
            "n_inner": self.intermediate_size,
            "layer_norm_epsilon": self.layer_norm_eps,
            "activation_function": self.hidden_act,
            "resid_pdrop": self.resid_dropout,
            "embd_pdrop": self.embd_dropout,
            "attn_pdrop": self.attention_dropout,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": True,
        }


class GPT2Block(nnx.Module):
    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        # GPT-2 scales the init of residual-output projections by 1/sqrt(2·layers).
        out_std = cfg.initializer_range / (2 * cfg.num_layers) ** 0.5
        self.ln_1 = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.attention = Attention(cfg.hidden_size, cfg.num_heads, dropout=cfg.attention_dropout,
                                   std=cfg.initializer_range, out_std=out_std, **kw)
        self.ln_2 = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.intermediate = dense(cfg.hidden_size, cfg.inner, ("embed", "mlp"), std=cfg.initializer_range, **kw)
        self.output = dense(cfg.inner, cfg.hidden_size, ("mlp", "embed"), std=out_std, **kw)
        self.dropout = Dropout(cfg.resid_dropout)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x_BxLxD, mask_BxLxS, *, cache=None, cache_index=None, rngs=None):
        det = rngs is None
        a_BxLxD, cache = self.attention(self.ln_1(x_BxLxD), mask_BxLxS, cache=cache, cache_index=cache_index, rngs=rngs)
        a_BxLxD = self.dropout(a_BxLxD, deterministic=det, rngs=rngs)
        if getattr(self, "attention_adapter", None) is not None:  # Houlsby adapters (models/peft.py)
            a_BxLxD = self.attention_adapter(a_BxLxD)
        x_BxLxD = x_BxLxD + a_BxLxD
        m_BxLxD = self.output(self.act(self.intermediate(self.ln_2(x_BxLxD), rngs)), rngs)
        m_BxLxD = self.dropout(m_BxLxD, deterministic=det, rngs=rngs)
        if getattr(self, "output_adapter", None) is not None:
            m_BxLxD = self.output_adapter(m_BxLxD)
        return x_BxLxD + m_BxLxD, cache


class GPT2(nnx.Module):
    # The family, decided here once: stage code asks ``kind`` (encoder | decoder), never isinstance.
    kind = "decoder"
    arch = "gpt2"

    @property
    def max_positions(self) -> int:
        return self.config.n_positions

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.config = cfg
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.wte = embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), std=cfg.initializer_range, **kw)
        self.wpe = embed(cfg.n_positions, cfg.hidden_size, ("position", "embed"), std=0.01, **kw)
        self.dropout = Dropout(cfg.embd_dropout)
        self.layers = nnx.List([GPT2Block(cfg, **kw) for _ in range(cfg.num_layers)])
        self.ln_f = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> Cache:
        if max_len > self.config.n_positions:
            raise ValueError(f"cache length {max_len} exceeds n_positions {self.config.n_positions}")
        H = self.config.num_heads
        return Cache.empty(len(self.layers), batch, H, max_len, self.config.hidden_size // H, dtype or self.dtype,
                           stacked=is_stacked(self))

    def __call__(self, input_ids_BxL, attention_mask_BxL=None, *, cache: Cache | None = None,
                 inputs_embeds_BxLxD=None, rngs: nnx.Rngs | None = None, positions_BxL: Array | None = None,
                 block_mask_BxLxL: Array | None = None) -> tuple[Array, Cache | None]:
        """Final hidden states (after ln_f) and the updated cache.

        Positions come from the attention mask (cumsum − 1), so left-padded prompts get the same
        positions as unpadded ones, with or without a cache.
        """
        B, L = input_ids_BxL.shape
        if attention_mask_BxL is None:
            attention_mask_BxL = jnp.ones((B, L), jnp.int32)
        attention_mask_BxL = attention_mask_BxL.astype(jnp.int32)
        pos_BxL, mask_BxLxS, index, valid_BxS = decoder_inputs(attention_mask_BxL, cache, positions_BxL,
                                                                  block_mask_BxLxL)
        x_BxLxD = self.wte(input_ids_BxL) if inputs_embeds_BxLxD is None else inputs_embeds_BxLxD
        x_BxLxD = self.dropout(x_BxLxD + self.wpe(pos_BxL), deterministic=rngs is None, rngs=rngs)

        def step(block, x_BxLxD, layer_cache, layer_rngs):
            return block(x_BxLxD, mask_BxLxS, cache=layer_cache, cache_index=index, rngs=layer_rngs)

        x_BxLxD, new_layers = run_layers(self.layers, step, x_BxLxD, None if cache is None else cache.layers,
                                         keys=layer_keys(rngs, len(self.layers)))
        h_BxLxD = self.ln_f(x_BxLxD)
        if cache is not None:
            cache = advance_cache(cache, new_layers, valid_BxS, attention_mask_BxL)
        return h_BxLxD, cache

    def logits(self, h_NxD: Array, vocab_ids=None) -> Array:
        """LM logits (float32) through the tied embedding, over all or the given vocab rows."""
        w_VxD = self.wte.embedding[...]
        if vocab_ids is not None:
            w_VxD = jnp.take(w_VxD, vocab_ids, axis=0)
        return jnp.einsum("...d,vd->...v", h_NxD, w_VxD.astype(h_NxD.dtype), preferred_element_type=jnp.float32)
