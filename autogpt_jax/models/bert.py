"""BERT encoder in Flax NNX with an MLM head (decoder tied to the word embeddings), a pooler,
a sequence-classification head and CLS / mean / pooler pooling.

The MLM head projects only the hidden states it is given, onto only the vocabulary rows it is
asked for: training gathers masked positions first, and cloze scoring asks for label words only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from autogpt_jax.models.layers import Attention, Dropout, activation, dense, embed, layer_norm, padding_mask
from autogpt_jax.models.scan import layer_at, layer_keys, rngs_at, run_layers

Array = jax.Array

POOLING = ("cls", "mean", "pooler")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    initializer_range: float = 0.02
    pad_token_id: int = 0
    # Classification head size; 0 means no head.
    num_labels: int = 0
    classifier_dropout: float | None = None

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        activation(self.hidden_act)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> "BertConfig":
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type={hf['position_embedding_type']!r} is not supported (absolute only)")
        kw = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            hidden_act=hf.get("hidden_act", "gelu"),
            hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            initializer_range=hf.get("initializer_range", 0.02),
            pad_token_id=hf.get("pad_token_id") or 0,
            classifier_dropout=hf.get("classifier_dropout"),
        )
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        return {
            "model_type": "bert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": self.hidden_act,
            "hidden_dropout_prob": self.hidden_dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "initializer_range": self.initializer_range,
            "pad_token_id": self.pad_token_id,
            "classifier_dropout": self.classifier_dropout,
            "position_embedding_type": "absolute",
            "tie_word_embeddings": True,
        }


class BertEmbeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, std=cfg.initializer_range)
        self.word = embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), **kw)
        self.position = embed(cfg.max_position_embeddings, cfg.hidden_size, ("position", "embed"), **kw)
        self.token_type = embed(cfg.type_vocab_size, cfg.hidden_size, (None, "embed"), **kw)
        self.norm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.dropout = Dropout(cfg.hidden_dropout)

    def __call__(self, input_ids_BxL, token_type_ids_BxL, *, inputs_embeds_BxLxD=None, rngs=None):
        L = input_ids_BxL.shape[1]
        x_BxLxD = self.word(input_ids_BxL) if inputs_embeds_BxLxD is None else inputs_embeds_BxLxD
        x_BxLxD = x_BxLxD + self.position(jnp.arange(L))[None] + self.token_type(token_type_ids_BxL)
        return self.dropout(self.norm(x_BxLxD), deterministic=rngs is None, rngs=rngs)


class BertLayer(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.attention = Attention(cfg.hidden_size, cfg.num_heads, dropout=cfg.attention_dropout,
                                   std=cfg.initializer_range, **kw)
        self.attention_norm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.intermediate = dense(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), std=cfg.initializer_range, **kw)
        self.output = dense(cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), std=cfg.initializer_range, **kw)
        self.output_norm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.dropout = Dropout(cfg.hidden_dropout)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x_BxLxD, mask_BxLxL, *, positions_BxP=None, rngs=None):
        """With ``positions_BxP``, only those positions are computed (they still attend every
        position): the output is B × P × D."""
        det = rngs is None
        kv_BxSxD = None
        if positions_BxP is not None:
            kv_BxSxD = x_BxLxD
            x_BxLxD = jnp.take_along_axis(x_BxLxD, positions_BxP[..., None].astype(jnp.int32), axis=1)
            mask_BxLxL = jnp.take_along_axis(mask_BxLxL, positions_BxP[..., None].astype(jnp.int32), axis=1)
        attn_BxLxD, _ = self.attention(x_BxLxD, mask_BxLxL, kv_BxSxD=kv_BxSxD, rngs=rngs)
        attn_BxLxD = self.dropout(attn_BxLxD, deterministic=det, rngs=rngs)
        if getattr(self, "attention_adapter", None) is not None:  # Houlsby adapters (models/peft.py)
            attn_BxLxD = self.attention_adapter(attn_BxLxD)
        x_BxLxD = self.attention_norm(x_BxLxD + attn_BxLxD)
        h_BxLxF = self.act(self.intermediate(x_BxLxD, rngs))
        out_BxLxD = self.dropout(self.output(h_BxLxF, rngs), deterministic=det, rngs=rngs)
        if getattr(self, "output_adapter", None) is not None:
            out_BxLxD = self.output_adapter(out_BxLxD)
        return self.output_norm(x_BxLxD + out_BxLxD)


class MLMHead(nnx.Module):
    """Transform (dense + act + LayerNorm) then the tied decoder plus a per-token bias."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.transform = dense(cfg.hidden_size, cfg.hidden_size, ("embed", "embed_out"), std=cfg.initializer_range, **kw)
        self.norm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), param_dtype), out_sharding=("vocab",))
        self.act = activation(cfg.hidden_act)

    def __call__(self, h_NxD: Array, word_VxD: Array, vocab_ids=None) -> Array:
        h_NxD = self.norm(self.act(self.transform(h_NxD)))
        bias_V = self.bias[...]
        if vocab_ids is not None:
            word_VxD = jnp.take(word_VxD, vocab_ids, axis=0)
            bias_V = jnp.take(bias_V, vocab_ids, axis=0)
        logits = jnp.einsum("nd,vd->nv", h_NxD, word_VxD.astype(h_NxD.dtype), preferred_element_type=jnp.float32)
        # The bias enters as a rank-1 product rather than a broadcast add: its gradient is then a
        # matrix-vector product, not a column reduction over N × V (5x faster on CPU).
        ones_Nx1 = jnp.ones((h_NxD.shape[0], 1), jnp.float32)
        return logits + jnp.dot(ones_Nx1, bias_V.astype(jnp.float32)[None, :])


class Bert(nnx.Module):
    """BERT encoder with pooler, MLM head and (when ``cfg.num_labels``) a classifier.

    ``__call__`` returns the last hidden states; the heads are separate methods so that callers
    compute only what they use.
    """

    # The family, decided here once: stage code asks ``kind`` (encoder | decoder), never isinstance.
    kind = "encoder"
    arch = "bert"

    @property
    def max_positions(self) -> int:
        return self.config.max_position_embeddings

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.config = cfg
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.embeddings = BertEmbeddings(cfg, **kw)
        self.layers = nnx.List([BertLayer(cfg, **kw) for _ in range(cfg.num_layers)])
        self.pooler = dense(cfg.hidden_size, cfg.hidden_size, ("embed", "embed_out"), std=cfg.initializer_range, **kw)
        self.mlm = MLMHead(cfg, **kw)
        if cfg.num_labels:
            self.classifier = dense(cfg.hidden_size, cfg.num_labels, ("embed", None), std=cfg.initializer_range, **kw)
            drop = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout
            self.classifier_dropout = Dropout(drop)
        else:
            self.classifier = None

    def __call__(self, input_ids_BxL, attention_mask_BxL=None, token_type_ids_BxL=None, *,
                 inputs_embeds_BxLxD=None, output_positions_BxP=None, rngs: nnx.Rngs | None = None) -> Array:
        """Last hidden states (B × L × D). ``rngs`` given ⇒ dropout on (training); None ⇒ deterministic.

        ``output_positions_BxP``: return only these positions (B × P × D). The last layer then
        computes its queries, output projection and feed-forward for them alone — the MLM loss
        needs ~15% of the positions, so most of that layer is skipped.
        """
        if attention_mask_BxL is None:
            attention_mask_BxL = jnp.ones_like(input_ids_BxL)
        if token_type_ids_BxL is None:
            token_type_ids_BxL = jnp.zeros_like(input_ids_BxL)
        soft = getattr(self, "soft_prompt", None)
        if soft is not None:
            # Prompt tuning: P trained vectors before the tokens (positions 0..P-1); callers still
            # see (and index) only the L token positions.
            B, P = input_ids_BxL.shape[0], soft.shape[0]
            if inputs_embeds_BxLxD is None:
                inputs_embeds_BxLxD = self.embeddings.word(input_ids_BxL)
            inputs_embeds_BxLxD = jnp.concatenate(
                [jnp.broadcast_to(soft[...].astype(inputs_embeds_BxLxD.dtype)[None], (B, P, soft.shape[1])),
                 inputs_embeds_BxLxD], axis=1)
            input_ids_BxL = jnp.concatenate([jnp.zeros((B, P), input_ids_BxL.dtype), input_ids_BxL], axis=1)
            token_type_ids_BxL = jnp.concatenate([jnp.zeros((B, P), token_type_ids_BxL.dtype), token_type_ids_BxL], 1)
            attention_mask_BxL = jnp.concatenate([jnp.ones((B, P), attention_mask_BxL.dtype), attention_mask_BxL], 1)
            if output_positions_BxP is not None:
                output_positions_BxP = output_positions_BxP + P
        x_BxLxD = self.embeddings(input_ids_BxL, token_type_ids_BxL, inputs_embeds_BxLxD=inputs_embeds_BxLxD, rngs=rngs)
        mask_BxLxL = padding_mask(attention_mask_BxL, input_ids_BxL.shape[1])
        last = len(self.layers) - 1
        keys = layer_keys(rngs, last + 1)
        x_BxLxD, _ = run_layers(self.layers, lambda layer, x, _, r: (layer(x, mask_BxLxL, rngs=r), None), x_BxLxD,
                                keys=keys, stop=last)
        # The last layer on its own: with output positions it computes only those.
        x_BxLxD = layer_at(self.layers, last)(x_BxLxD, mask_BxLxL, positions_BxP=output_positions_BxP,
                                             rngs=rngs_at(keys, last))
        if soft is not None and output_positions_BxP is None:
            x_BxLxD = x_BxLxD[:, soft.shape[0]:]
        return x_BxLxD

    def word_embeddings(self) -> Array:
        return self.embeddings.word.embedding[...]

    def mlm_logits(self, h_NxD: Array, vocab_ids=None) -> Array:
        """MLM logits (float32) for the given hidden states only, over all or the given vocab rows."""
        return self.mlm(h_NxD, self.word_embeddings(), vocab_ids)

    def pool(self, h_BxLxD: Array, attention_mask_BxL: Array, mode: str = "cls") -> Array:
        if mode == "cls":
            return h_BxLxD[:, 0]
        if mode == "pooler":
            return jnp.tanh(self.pooler(h_BxLxD[:, 0]))
        if mode == "mean":
            m_BxLx1 = attention_mask_BxL[..., None].astype(h_BxLxD.dtype)
            return (h_BxLxD * m_BxLx1).sum(1) / jnp.maximum(m_BxLx1.sum(1), 1.0)
        raise ValueError(f"unknown pooling {mode!r}; choose one of {POOLING}")

    def classify(self, h_BxLxD: Array, attention_mask_BxL: Array, *, pooling: str = "pooler", rngs=None) -> Array:
        """Classifier logits (float32) as in BertForSequenceClassification (pooler → dropout → linear)."""
        if self.classifier is None:
            raise ValueError("this model has no classification head: build it with num_labels > 0")
        pooled_BxD = self.pool(h_BxLxD, attention_mask_BxL, pooling)
        pooled_BxD = self.classifier_dropout(pooled_BxD, deterministic=rngs is None, rngs=rngs)
        return self.classifier(pooled_BxD).astype(jnp.float32)
