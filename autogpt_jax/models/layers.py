"""Building blocks shared by the BERT and GPT-2 models.

Every parameter is created with logical axis names (``vocab``, ``embed``, ``heads``, ``mlp``,
``position``, ``norm``). ``training/sharding.py`` owns the one table that maps them onto mesh axes.
Tensor names carry their shapes: B batch, L query length, S key length, D model width,
H heads, K head width, V vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

# Large negative logit for masked attention slots. Not -inf: a fully masked row (a padding query)
# must still give finite values rather than NaN.
MASK_VALUE = -1e9


def partitioned(init, axes: tuple[str | None, ...]):
    return nnx.with_partitioning(init, axes)


class Dense(nnx.Module):
    """y = x W + b with W stored (in, out).

    Inputs are flattened to 2-D before the matmul: XLA's CPU backend computes the weight gradient
    of a 2-D matmul about 2x faster than one that contracts over two leading (batch, length) axes.
    """

    def __init__(self, in_features: int, out_features: int, axes: tuple[str | None, str | None], *,
                 rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32, std: float = 0.02,
                 use_bias: bool = True):
        self.kernel = nnx.Param(nnx.initializers.normal(std)(rngs.params(), (in_features, out_features), param_dtype),
                                out_sharding=axes)
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype), out_sharding=(axes[1],)) if use_bias else None
        self.dtype = dtype
        self.in_features, self.out_features = in_features, out_features

    def __call__(self, x: Array, rngs: nnx.Rngs | None = None) -> Array:
        lead = x.shape[:-1]
        x_NxI = x.reshape(-1, x.shape[-1]).astype(self.dtype)
        y = jnp.dot(x_NxI, self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        lora_a = getattr(self, "lora_a", None)
        if lora_a is not None:  # a low-rank update attached by models/peft.py (LoRA / AdaLoRA)
            y = y + self.lora_delta(x_NxI, rngs)
        return y.reshape(*lead, self.out_features)

    def lora_delta(self, x_NxI: Array, rngs: nnx.Rngs | None = None) -> Array:
        """scale · dropout(x) A [diag(λ ⊙ mask)] B: LoRA, or AdaLoRA's SVD form P Λ Q when λ is set."""
        x_NxI = self.lora_dropout(x_NxI, deterministic=rngs is None, rngs=rngs)
        h_NxR = jnp.dot(x_NxI, self.lora_a[...].astype(self.dtype))
        if getattr(self, "lora_e", None) is not None:
            h_NxR = h_NxR * (self.lora_e[...] * self.lora_mask[...]).astype(self.dtype)
        return jnp.dot(h_NxR, self.lora_b[...].astype(self.dtype)) * jnp.asarray(self.lora_scale, self.dtype)


def dense(
    in_features: int,
    out_features: int,
    axes: tuple[str | None, str | None],
    *,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    std: float = 0.02,
    use_bias: bool = True,
) -> Dense:
    """A dense layer whose kernel is (in, out) with the given logical axes; bias on the out axis."""
    return Dense(in_features, out_features, axes, rngs=rngs, dtype=dtype, param_dtype=param_dtype, std=std,
                 use_bias=use_bias)


def layer_norm(features: int, eps: float, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    return nnx.LayerNorm(
        features,
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=partitioned(nnx.initializers.ones_init(), ("norm",)),
        bias_init=partitioned(nnx.initializers.zeros_init(), ("norm",)),
        rngs=rngs,
    )


def embed(num: int, features: int, axes: tuple[str, str], *, rngs: nnx.Rngs, dtype=jnp.float32,
          param_dtype=jnp.float32, std: float = 0.02) -> nnx.Embed:
    return nnx.Embed(
        num,
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        embedding_init=partitioned(nnx.initializers.normal(std), axes),
        rngs=rngs,
    )


def gelu_erf(x: Array) -> Array:
    """Exact GELU, x·Φ(x), through erf as PyTorch computes it. (jax.nn.gelu's exact form goes
    through erfc, which costs about 3x more on CPU.)"""
    return x * 0.5 * (1.0 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


ACTIVATIONS = {
    "gelu": gelu_erf,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}") from None


class Dropout(nnx.Module):
    """Inverted dropout, drawing 16 random bits per element (two elements per 32-bit word).

    Random bits dominate dropout's cost on CPUs; halving them makes a BERT training step about 10%
    faster. The drop rate is exact to 1/65536 and the kept values are rescaled by the exact keep rate.
    Deterministic when ``rngs`` is None (evaluation).
    """

    def __init__(self, rate: float):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate = rate

    def __call__(self, x: Array, *, deterministic: bool | None = None, rngs: nnx.Rngs | None = None) -> Array:
        threshold = int(round(self.rate * 65536))
        if deterministic or rngs is None or threshold == 0:
            return x
        n = x.size
        words = jax.random.bits(rngs.dropout(), ((n + 1) // 2,), jnp.uint32)
        bits = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:n].reshape(x.shape)
        keep = bits >= jnp.uint16(threshold)
        scale = 65536.0 / (65536 - threshold)
        return jnp.where(keep, x * jnp.asarray(scale, x.dtype), jnp.zeros((), x.dtype))


class LayerCache(NamedTuple):
    """Key/value cache of one attention layer, of fixed size S (the generation buffer)."""

    k_BxHxSxK: Array
    v_BxHxSxK: Array


class Attention(nnx.Module):
    """Multi-head self-attention with separate query/key/value/out projections.

    Separate projections (rather than GPT-2's fused ``c_attn``) give every model the same
    parameter names, so PEFT targets such as ``query,value`` mean the same thing everywhere.
    """

    def __init__(self, hidden: int, num_heads: int, *, dropout: float, rngs: nnx.Rngs,
                 dtype=jnp.float32, param_dtype=jnp.float32, std: float = 0.02, out_std: float | None = None,
                 num_kv_heads: int | None = None, head_dim: int | None = None, use_bias: bool = True):
        """``num_kv_heads < num_heads`` is grouped-query attention (Llama): each key/value head
        serves ``num_heads / num_kv_heads`` query heads, and the cache holds only the kv heads."""
        if head_dim is None and hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        if num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        self.head_dim = head_dim or hidden // num_heads
        q_out, kv_out = num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, std=std, use_bias=use_bias)
        self.query = dense(hidden, q_out, ("embed", "heads"), **kw)
        self.key = dense(hidden, kv_out, ("embed", "heads"), **kw)
        self.value = dense(hidden, kv_out, ("embed", "heads"), **kw)
        self.out = dense(q_out, hidden, ("heads", "embed"), **{**kw, "std": std if out_std is None else out_std})
        self.dropout = Dropout(dropout)
        self.dtype = dtype

    def _heads(self, x_BxLxD: Array, heads: int | None = None) -> Array:
        B, L, _ = x_BxLxD.shape
        # Heads-major layout: the two attention matmuls become plain batched GEMMs (2x faster on CPU
        # than contracting over a middle axis).
        return x_BxLxD.reshape(B, L, heads or self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def __call__(
        self,
        x_BxLxD: Array,
        mask_BxLxS: Array,
        *,
        cache: LayerCache | None = None,
        cache_index: Array | None = None,
        kv_BxSxD: Array | None = None,
        rope: tuple[Array, Array] | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[Array, LayerCache | None]:
        """``mask_BxLxS`` is boolean: True where query l may attend key s.

        With a cache, the new keys/values are written at ``cache_index`` and attention runs over the
        whole fixed-size buffer (S = cache length), so shapes never change during generation.
        ``kv_BxSxD``: keys/values from other positions than the queries (default: the same).
        ``rope``: (cos, sin), each B×L×K, rotary embeddings applied to queries and keys.
        """
        kv_BxSxD = x_BxLxD if kv_BxSxD is None else kv_BxSxD
        q_BxHxLxK = self._heads(self.query(x_BxLxD, rngs))
        k_BxHxLxK = self._heads(self.key(kv_BxSxD, rngs), self.num_kv_heads)
        v_BxHxLxK = self._heads(self.value(kv_BxSxD, rngs), self.num_kv_heads)
        if rope is not None:
            q_BxHxLxK, k_BxHxLxK = apply_rope(q_BxHxLxK, *rope), apply_rope(k_BxHxLxK, *rope)
        prefix_k = getattr(self, "prefix_k", None)
        if prefix_k is not None:  # prefix tuning: P trained key/value slots every query may attend
            if cache is not None:
                raise ValueError("prefix tuning does not combine with KV-cache generation")
            B = x_BxLxD.shape[0]
            pk_BxPxD = jnp.broadcast_to(prefix_k[...].astype(self.dtype)[None], (B, *prefix_k.shape))
            pv_BxPxD = jnp.broadcast_to(self.prefix_v[...].astype(self.dtype)[None], (B, *prefix_k.shape))
            k_BxHxLxK = jnp.concatenate([self._heads(pk_BxPxD), k_BxHxLxK], axis=2)
            v_BxHxLxK = jnp.concatenate([self._heads(pv_BxPxD), v_BxHxLxK], axis=2)
            mask_BxLxS = jnp.concatenate(
                [jnp.ones((*mask_BxLxS.shape[:2], prefix_k.shape[0]), bool), mask_BxLxS], axis=2)
        if cache is not None:
            k_BxHxLxK = jax.lax.dynamic_update_slice_in_dim(cache.k_BxHxSxK, k_BxHxLxK.astype(cache.k_BxHxSxK.dtype),
                                                            cache_index, axis=2)
            v_BxHxLxK = jax.lax.dynamic_update_slice_in_dim(cache.v_BxHxSxK, v_BxHxLxK.astype(cache.v_BxHxSxK.dtype),
                                                            cache_index, axis=2)
            cache = LayerCache(k_BxHxLxK, v_BxHxLxK)
        scale = 1.0 / jnp.sqrt(jnp.float32(self.head_dim))
        B, L = x_BxLxD.shape[:2]
        G = self.num_heads // self.num_kv_heads  # query heads per key/value head
        q_BxGxLxK = q_BxHxLxK.reshape(B, self.num_kv_heads, G * L, self.head_dim) if G > 1 else q_BxHxLxK
        logits_BxHxLxS = jnp.einsum("bhlk,bhsk->bhls", q_BxGxLxK, k_BxHxLxK.astype(q_BxHxLxK.dtype),
                                    preferred_element_type=jnp.float32) * scale
        if G > 1:  # query heads of a group were stacked along the length axis: split them back out
            logits_BxHxLxS = logits_BxHxLxS.reshape(B, self.num_heads, L, -1)
        logits_BxHxLxS = jnp.where(mask_BxLxS[:, None], logits_BxHxLxS, MASK_VALUE)
        probs_BxHxLxS = jax.nn.softmax(logits_BxHxLxS, axis=-1).astype(self.dtype)
        probs_BxHxLxS = self.dropout(probs_BxHxLxS, deterministic=rngs is None, rngs=rngs)
        if G > 1:
            probs_BxHxLxS = probs_BxHxLxS.reshape(B, self.num_kv_heads, G * L, -1)
        ctx_BxHxLxK = jnp.einsum("bhls,bhsk->bhlk", probs_BxHxLxS, v_BxHxLxK.astype(self.dtype))
        ctx_BxHxLxK = ctx_BxHxLxK.reshape(B, self.num_heads, L, self.head_dim)
        return self.out(ctx_BxHxLxK.transpose(0, 2, 1, 3).reshape(B, L, -1), rngs), cache


def rope_tables(pos_BxL: Array, head_dim: int, theta: float, dtype=jnp.float32) -> tuple[Array, Array]:
    """cos, sin (B×L×K) of rotary embeddings at integer positions, in the half-split layout that
    Hugging Face Llama uses (the first K/2 and last K/2 features form the rotated pairs)."""
    inv_freq_F = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    ang_BxLxF = pos_BxL.astype(jnp.float32)[..., None] * inv_freq_F
    ang_BxLxK = jnp.concatenate([ang_BxLxF, ang_BxLxF], axis=-1)
    return jnp.cos(ang_BxLxK).astype(dtype), jnp.sin(ang_BxLxK).astype(dtype)


def apply_rope(x_BxHxLxK: Array, cos_BxLxK: Array, sin_BxLxK: Array) -> Array:
    half = x_BxHxLxK.shape[-1] // 2
    rot = jnp.concatenate([-x_BxHxLxK[..., half:], x_BxHxLxK[..., :half]], axis=-1)
    return x_BxHxLxK * cos_BxLxK[:, None].astype(x_BxHxLxK.dtype) + rot * sin_BxLxK[:, None].astype(x_BxHxLxK.dtype)


class RMSNorm(nnx.Module):
    """x / sqrt(mean(x²) + eps) · scale, computed in float32 (as Hugging Face Llama does)."""

    def __init__(self, features: int, eps: float, *, rngs: nnx.Rngs | None = None, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((features,), param_dtype), out_sharding=("norm",))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (self.scale[...].astype(jnp.float32) * y).astype(self.dtype)


class Cache(NamedTuple):
    """Fixed-size generation buffer of a decoder: per-layer keys/values, which slots hold real
    tokens, the next write slot, and each row's next position id (rows may be left-padded)."""

    layers: tuple[LayerCache, ...] | LayerCache  # one per layer, or one stacked (scanned layers: L×B×H×S×K)
    valid_BxS: Array
    index: Array
    next_pos_B: Array

    @classmethod
    def empty(cls, num_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int, dtype,
              stacked: bool = False) -> "Cache":
        if stacked:
            z = jnp.zeros((num_layers, batch, kv_heads, max_len, head_dim), dtype)
            layers = LayerCache(z, z)
        else:
            z = jnp.zeros((batch, kv_heads, max_len, head_dim), dtype)
            layers = tuple(LayerCache(z, z) for _ in range(num_layers))
        return cls(layers, jnp.zeros((batch, max_len), bool), jnp.zeros((), jnp.int32), jnp.zeros((batch,), jnp.int32))

    def broadcast(self, batch: int) -> "Cache":
        """A one-row cache (a shared prefix) repeated for ``batch`` rows."""
        kv = jax.tree.map(lambda x: jnp.broadcast_to(x, (*x.shape[:-4], batch, *x.shape[-3:])), self.layers)
        return Cache(kv, jnp.broadcast_to(self.valid_BxS, (batch, self.valid_BxS.shape[1])), self.index,
                     jnp.broadcast_to(self.next_pos_B, (batch,)))


def decoder_inputs(attention_mask_BxL: Array, cache: Cache | None, positions_BxL: Array | None = None,
                   block_mask_BxLxL: Array | None = None):
    """Position ids, the causal mask over the keys, the cache write index and the updated slot
    validity for a decoder call. Positions come from the attention mask (cumsum − 1), so left-padded
    rows get the positions of unpadded ones, with or without a cache.

    ``positions_BxL`` / ``block_mask_BxLxL`` override the positions (relative to the cache) and the
    mask among this call's tokens (True: query l may attend key l'), e.g. for several candidate
    continuations that share a context but not each other."""
    L = attention_mask_BxL.shape[1]
    pos_BxL = jnp.maximum(jnp.cumsum(attention_mask_BxL, axis=1) - 1, 0) if positions_BxL is None else positions_BxL
    keys_BxL = attention_mask_BxL.astype(bool)
    if cache is None:
        mask = causal_mask(attention_mask_BxL, 0, L) if block_mask_BxLxL is None else block_mask_BxLxL & keys_BxL[:, None]
        return pos_BxL, mask, None, None
    valid_BxS = jax.lax.dynamic_update_slice_in_dim(cache.valid_BxS, keys_BxL, cache.index, axis=1)
    mask_BxLxS = causal_mask(valid_BxS, cache.index, L)
    if block_mask_BxLxL is not None:
        mask_BxLxS = jax.lax.dynamic_update_slice_in_dim(mask_BxLxS, block_mask_BxLxL & keys_BxL[:, None],
                                                         cache.index, axis=2)
    return cache.next_pos_B[:, None] + pos_BxL, mask_BxLxS, cache.index, valid_BxS


def advance_cache(cache: Cache, layers, valid_BxS: Array, attention_mask_BxL: Array) -> Cache:
    """``layers``: the updated per-layer caches (a sequence, or one stacked LayerCache)."""
    layers = layers if isinstance(layers, LayerCache) else tuple(layers)
    return Cache(layers, valid_BxS, cache.index + attention_mask_BxL.shape[1],
                 cache.next_pos_B + attention_mask_BxL.sum(axis=1))


def padding_mask(attention_mask_BxS: Array, query_len: int) -> Array:
    """Bidirectional mask: every query attends every non-padding key."""
    return jnp.broadcast_to(attention_mask_BxS[:, None, :].astype(bool),
                            (attention_mask_BxS.shape[0], query_len, attention_mask_BxS.shape[1]))


def causal_mask(attention_mask_BxS: Array, query_offset: Array | int, query_len: int) -> Array:
    """Causal mask over a key buffer: query l (at absolute slot offset+l) sees slots s <= offset+l that are valid."""
    S = attention_mask_BxS.shape[1]
    q_pos_L = query_offset + jnp.arange(query_len)
    allowed_LxS = jnp.arange(S)[None, :] <= q_pos_L[:, None]
    return allowed_LxS[None] & attention_mask_BxS[:, None, :].astype(bool)
