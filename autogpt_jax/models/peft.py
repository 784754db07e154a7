"""Parameter-efficient fine-tuning: LoRA, AdaLoRA, Houlsby adapters, prefix tuning, prompt tuning, BitFit.

``apply(model, cfg)`` attaches the method's parameters to a loaded model in place. They are of type
``PeftParam`` (a subclass of ``nnx.Param``), so ``trainable_filter`` selects them by type: the
trainer then gives gradients and Adam moments to them (and to the task head) only, and everything
else rides along frozen, optionally held in bfloat16.

- lora      W x + (α/r) · B A x on the target projections (A random, B zero: the model starts unchanged).
- adalora   the update in SVD form P Λ Q (Zhang et al. 2023): singular values are switched off by a
            rank mask that follows a cubic budget schedule from ``init_rank`` to ``target_rank``
            triplets per matrix on average, kept by smoothed sensitivity × uncertainty importance;
            an orthogonality penalty ‖PᵀP − I‖² + ‖QQᵀ − I‖² joins the loss.
- adapter   a bottleneck (down, GELU, up; up starts at zero) on the attention and feed-forward
            outputs of every layer, before the residual sum (Houlsby et al. 2019).
- prefix    P trained key and value vectors per layer that every query may attend (prefix tuning /
            P-tuning v2, without the reparameterisation MLP).
- prompt    P trained input vectors placed before the tokens (prompt tuning, Lester et al. 2021);
            combines with a discrete template.
- bitfit    only the bias terms train.

Projection names (``--peft.targets``) are the same for BERT, GPT-2 and Llama: query, key, value, out
(attention output), intermediate, output (feed-forward); Llama adds gate (SwiGLU's gate_proj).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogpt_jax.config import PeftConfig
from autogpt_jax.errors import ConfigError
from autogpt_jax.models.layers import Dense, Dropout, gelu_erf
from autogpt_jax.models.scan import is_stacked, unstacked

TARGETS = ("query", "key", "value", "out", "gate", "intermediate", "output")


class PeftParam(nnx.Param):
    """A parameter added by a PEFT method: the trainer's filter selects these by type."""


class AdaLoRAState(nnx.Variable):
    """AdaLoRA's non-trained state: the rank mask and the smoothed importance statistics."""


class Adapter(nnx.Module):
    """x + up(gelu(down(x))), with ``up`` zero-initialised so the adapter starts as the identity."""

    def __init__(self, features: int, size: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        std = 1e-3
        self.down = PeftParam(nnx.initializers.normal(std)(rngs.params(), (features, size)), out_sharding=("embed", None))
        self.down_bias = PeftParam(jnp.zeros((size,)), out_sharding=(None,))
        self.up = PeftParam(jnp.zeros((size, features)), out_sharding=(None, "embed"))
        self.up_bias = PeftParam(jnp.zeros((features,)), out_sharding=("embed",))
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        h = gelu_erf(jnp.dot(x.astype(self.dtype), self.down[...].astype(self.dtype)) + self.down_bias[...].astype(self.dtype))
        return x + jnp.dot(h, self.up[...].astype(self.dtype)) + self.up_bias[...].astype(self.dtype)


Array = jax.Array


def _arch(model) -> str:
    return model.arch


def valid_targets(model) -> tuple[str, ...]:
    return tuple(t for t in TARGETS if t != "gate" or _arch(model) == "llama")


def target_denses(model, targets: tuple[str, ...]) -> list[tuple[str, Dense]]:
    """(path, layer) of every target projection, in layer order. With scanned layers there is one
    (stacked) projection per target, at ``layers.*``: its variables have a leading layers axis."""
    valid = valid_targets(model)
    unknown = [t for t in targets if t not in valid]
    if unknown:
        raise ConfigError(f"peft.targets {unknown} are not projections of this {_arch(model)} model; valid names: "
                          f"{', '.join(valid)}")
    blocks = [("*", model.layers.stacked)] if is_stacked(model) else list(enumerate(model.layers))
    found = []
    for i, layer in blocks:
        for t in targets:
            d = getattr(layer.attention, t) if t in ("query", "key", "value", "out") else getattr(layer, t)
            prefix = f"layers.{i}.attention.{t}" if t in ("query", "key", "value", "out") else f"layers.{i}.{t}"
            found.append((prefix, d))
    return found


def _copies(model) -> int:
    """Projections each entry of ``target_denses`` stands for (the depth, when stacked)."""
    return len(model.layers) if is_stacked(model) else 1


def check(model, cfg: PeftConfig) -> None:
    """Every reason ``apply`` would refuse, raised before any weight changes."""
    if cfg.method == "none":
        return
    arch = _arch(model)
    if cfg.method in ("prefix", "prompt") and arch != "bert":
        raise ConfigError(f"peft.method {cfg.method} is built for BERT-family encoders; with a {arch} model use "
                          "lora, adalora, adapter" + (" or bitfit" if arch == "gpt2" else ""))
    if cfg.method == "bitfit" and arch == "llama" and not model.config.attention_bias:
        raise ConfigError("peft.method bitfit trains bias terms, and this Llama-family model has none; use lora, "
                          "adalora or adapter")
    if cfg.method in ("lora", "adalora"):
        for path, d in target_denses(model, cfg.target_list):
            limit = min(d.in_features, d.out_features)
            r = cfg.init_rank if cfg.method == "adalora" else cfg.rank
            if r > limit:
                raise ConfigError(f"peft rank {r} is larger than {path} allows ({d.in_features}×{d.out_features}: "
                                  f"at most {limit})")
    if cfg.method == "prompt":
        if model.config.max_position_embeddings < cfg.num_virtual_tokens + 2:
            raise ConfigError("peft.num_virtual_tokens leaves no positions for the input")


def apply(model, cfg: PeftConfig, *, seed: int = 0) -> None:
    """Attach the method's parameters to ``model`` (in place). Scanned layers get them per layer,
    stacked: the same values as on the unrolled model."""
    check(model, cfg)
    if cfg.method == "none":
        return
    with unstacked(model):
        _attach(model, cfg, seed)


def _attach(model, cfg: PeftConfig, seed: int) -> None:
    rngs = nnx.Rngs(params=seed + 1009)
    dtype = model.dtype
    D = model.config.hidden_size
    m = cfg.method
    if m in ("lora", "adalora"):
        r = cfg.init_rank if m == "adalora" else cfg.rank
        for _, d in target_denses(model, cfg.target_list):
            ax_in, ax_out = _axes(d)
            # A ~ Kaiming-uniform as in PEFT; B = 0 (LoRA), or AdaLoRA's P, Q ~ N(0, 0.02) with Λ = 0.
            if m == "lora":
                bound = 1.0 / np.sqrt(d.in_features)
                d.lora_a = PeftParam(jax.random.uniform(rngs.params(), (d.in_features, r), minval=-bound, maxval=bound),
                                     out_sharding=(ax_in, None))
                d.lora_b = PeftParam(jnp.zeros((r, d.out_features)), out_sharding=(None, ax_out))
            else:
                d.lora_a = PeftParam(0.02 * jax.random.normal(rngs.params(), (d.in_features, r)), out_sharding=(ax_in, None))
                d.lora_b = PeftParam(0.02 * jax.random.normal(rngs.params(), (r, d.out_features)), out_sharding=(None, ax_out))
                d.lora_e = PeftParam(jnp.zeros((r,)), out_sharding=(None,))
                d.lora_mask = AdaLoRAState(jnp.ones((r,)))
                d.lora_ipt = AdaLoRAState(jnp.zeros((r,)))  # smoothed sensitivity of each triplet
                d.lora_unc = AdaLoRAState(jnp.zeros((r,)))  # smoothed uncertainty
            d.lora_scale = cfg.alpha / r
            d.lora_dropout = Dropout(cfg.dropout)
    elif m == "adapter":
        for layer in model.layers:
            layer.attention_adapter = Adapter(D, cfg.adapter_size, rngs=rngs, dtype=dtype)
            layer.output_adapter = Adapter(D, cfg.adapter_size, rngs=rngs, dtype=dtype)
    elif m == "prefix":
        P = cfg.num_virtual_tokens
        for layer in model.layers:
            a = layer.attention
            a.prefix_k = PeftParam(0.02 * jax.random.normal(rngs.params(), (P, D)), out_sharding=(None, "heads"))
            a.prefix_v = PeftParam(0.02 * jax.random.normal(rngs.params(), (P, D)), out_sharding=(None, "heads"))
    elif m == "prompt":
        # Initialised from the embeddings of random vocabulary tokens (Lester et al.'s better init),
        # drawn from ids 1000-6000 (whole words in BERT vocabularies, past the special tokens).
        word = np.asarray(jax.device_get(model.word_embeddings()))
        V, P = word.shape[0], cfg.num_virtual_tokens
        lo = max(0, min(1000, V - P))
        idx = np.random.default_rng(seed).choice(np.arange(lo, min(V, lo + 5000)), P, replace=False)
        model.soft_prompt = PeftParam(jnp.asarray(word[idx]), out_sharding=(None, "embed"))


def _axes(d: Dense) -> tuple[Any, Any]:
    spec = getattr(d.kernel, "out_sharding", None) or getattr(d.kernel, "sharding", None) or (None, None)
    spec = tuple(spec) if spec is not None else (None, None)
    return (spec + (None, None))[:2]


def has_peft(model) -> bool:
    return bool(jax.tree.leaves(nnx.state(model, PeftParam)))


def trainable_filter(cfg: PeftConfig, *, head_paths: tuple[str, ...] = ()):
    """The parameters that train: everything (no PEFT), or the PEFT parameters plus the head
    (``head_paths``: "classifier", or "mlm" when adaptation trains a fresh MLM head); for bitfit,
    every bias plus the head."""
    if cfg.method == "none":
        return nnx.Param
    extra = [nnx.All(nnx.Param, nnx.PathContains(h)) for h in head_paths]
    if cfg.method == "bitfit":
        return nnx.Any(nnx.All(nnx.Param, lambda path, x: str(path[-1]) == "bias"), *extra)
    return nnx.Any(PeftParam, *extra)


def count_formula(model, cfg: PeftConfig) -> int:
    """Trainable PEFT parameters by the method's formula (the head not included)."""
    n_layers, D, k = len(model.layers), model.config.hidden_size, _copies(model)
    m = cfg.method
    if m == "lora":
        return k * sum(cfg.rank * (d.in_features + d.out_features) for _, d in target_denses(model, cfg.target_list))
    if m == "adalora":
        return k * sum(cfg.init_rank * (d.in_features + d.out_features + 1)
                       for _, d in target_denses(model, cfg.target_list))
    if m == "adapter":
        return n_layers * 2 * (2 * D * cfg.adapter_size + cfg.adapter_size + D)
    if m == "prefix":
        return n_layers * 2 * cfg.num_virtual_tokens * D
    if m == "prompt":
        return cfg.num_virtual_tokens * D
    if m == "bitfit":
        return int(sum(np.prod(x.shape) for p, x in nnx.to_flat_state(nnx.state(model, nnx.Param))
                       if str(p[-1]) == "bias" and not any(str(k) == "classifier" for k in p)))
    return 0


# --------------------------------------------------------------------------------------------
# AdaLoRA: orthogonality penalty, importance, budget schedule
# --------------------------------------------------------------------------------------------


def adalora_denses(model) -> list[Dense]:
    return [d for _, d in _all_denses(model) if getattr(d, "lora_e", None) is not None]


def _all_denses(model):
    return target_denses(model, valid_targets(model))


def orthogonality_penalty(model) -> Array:
    """Σ over AdaLoRA matrices of ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F, each averaged over its r² entries
    (P: in × r, Q: r × out, either with a leading layers axis when stacked)."""
    total = jnp.zeros((), jnp.float32)
    for d in adalora_denses(model):
        p, q = d.lora_a[...].astype(jnp.float32), d.lora_b[...].astype(jnp.float32)
        eye = jnp.eye(p.shape[-1])
        ptp = jnp.einsum("...ir,...is->...rs", p, p)
        qqt = jnp.einsum("...ri,...si->...rs", q, q)
        total = total + jnp.sum(jnp.mean((ptp - eye) ** 2, axis=(-2, -1)) + jnp.mean((qqt - eye) ** 2, axis=(-2, -1)))
    return total


@dataclasses.dataclass(frozen=True)
class with_orthogonality:
    """``loss_fn`` + ``weight`` · the orthogonality penalty (compares by value, so equal
    configurations share one compiled train step)."""

    loss_fn: Any
    weight: float

    def __call__(self, model, batch, rngs=None):
        value, aux = self.loss_fn(model, batch, rngs)
        reg = orthogonality_penalty(model)
        return value + self.weight * reg, {**aux, "orth_reg": reg}


def budget(step: Array, cfg: PeftConfig, total_steps: int, n_matrices: int) -> Array:
    """Total rank kept at ``step``: the full initial budget for ``t_init`` steps, then a cubic
    decrease to the target budget, reached ``t_final`` steps before the end (Zhang et al. 2023)."""
    b0, bT = cfg.init_rank * n_matrices, cfg.target_rank * n_matrices
    t_i, t_f = cfg.adalora_t_init, total_steps - cfg.adalora_t_final
    frac = jnp.clip((step - t_i) / max(t_f - t_i, 1), 0.0, 1.0)
    return jnp.round(bT + (b0 - bT) * (1.0 - frac) ** 3).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class adalora_update:
    """The trainer hook ``(model, grads_model, step)``: updates each triplet's smoothed importance
    (sensitivity |θ·∇θ| of λ_i, P's column i and Q's row i, times its uncertainty) in place and,
    every ``adalora_delta_t`` steps from ``adalora_t_init`` on, keeps the budget's worth of most
    important triplets across all matrices. Pure under jit: it only writes AdaLoRAState variables."""

    cfg: PeftConfig
    total_steps: int

    def __call__(self, model, grads, step):
        cfg, total_steps = self.cfg, self.total_steps
        b1, b2 = cfg.adalora_beta1, cfg.adalora_beta2
        denses, gdenses = adalora_denses(model), adalora_denses(grads)
        scores = []
        for d, g in zip(denses, gdenses):  # λ: (…, r); P: (…, in, r); Q: (…, r, out); … = layers when stacked
            s_now = (jnp.abs(d.lora_e[...] * g.lora_e[...]) + jnp.abs(d.lora_a[...] * g.lora_a[...]).mean(-2)
                     + jnp.abs(d.lora_b[...] * g.lora_b[...]).mean(-1))
            ipt = b1 * d.lora_ipt[...] + (1 - b1) * s_now
            unc = b2 * d.lora_unc[...] + (1 - b2) * jnp.abs(s_now - ipt)
            d.lora_ipt[...] = ipt
            d.lora_unc[...] = unc
            scores.append(ipt * unc)
        # Layer-major order (layer 0's targets, then layer 1's, ...) stacked or not, so that ties
        # are broken the same way in both layouts.
        table = jnp.stack(scores, axis=-2)  # (…, targets, r)
        all_scores = table.reshape(-1)
        keep = budget(step, cfg, total_steps, all_scores.shape[0] // table.shape[-1])
        order = jnp.argsort(-all_scores)
        kept = jnp.zeros_like(all_scores).at[order].set((jnp.arange(all_scores.shape[0]) < keep).astype(jnp.float32))
        kept = kept.reshape(table.shape)
        active = (step >= cfg.adalora_t_init) & (step % cfg.adalora_delta_t == 0)
        for j, d in enumerate(denses):
            d.lora_mask[...] = jnp.where(active, kept[..., j, :], d.lora_mask[...])


def total_rank(model) -> int:
    return int(sum(float(jnp.sum(d.lora_mask[...])) for d in adalora_denses(model)))


# --------------------------------------------------------------------------------------------
# merging and export
# --------------------------------------------------------------------------------------------


def merge(model) -> int:
    """Fold LoRA / AdaLoRA updates into the base kernels and drop the PEFT parameters; returns how
    many projections were merged. Other methods change the architecture and are not merged."""
    n = 0
    for _, d in _all_denses(model):
        if getattr(d, "lora_a", None) is None:
            continue
        a, b = d.lora_a[...].astype(jnp.float32), d.lora_b[...].astype(jnp.float32)  # (…, in, r), (…, r, out)
        if getattr(d, "lora_e", None) is not None:
            a = a * (d.lora_e[...] * d.lora_mask[...])[..., None, :]
            del d.lora_e, d.lora_mask, d.lora_ipt, d.lora_unc
        d.kernel[...] = (d.kernel[...].astype(jnp.float32) + d.lora_scale * (a @ b)).astype(d.kernel[...].dtype)
        del d.lora_a, d.lora_b, d.lora_scale, d.lora_dropout
        n += 1
    return n
