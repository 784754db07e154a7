"""Greedy and sampled generation for decoder models, jit-compiled with a fixed-size buffer.

The model must provide ``init_cache(batch, max_len)``, ``__call__(ids, mask, cache=...) -> (h, cache)``
and ``logits(h)``. Prompts are left-padded so every row's next token lands in the same slot.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogpt_jax.buckets import bucket_length

Array = jax.Array


def _pick(logits_BxV: Array, rng: Array, temperature: float, top_p: float) -> Array:
    if temperature <= 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = logits_BxV / temperature
    if top_p < 1.0:
        sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
        cum_BxV = jnp.cumsum(jax.nn.softmax(sorted_BxV, axis=-1), axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        cutoff_idx_B = jnp.sum(cum_BxV < top_p, axis=-1)
        cutoff_B = jnp.take_along_axis(sorted_BxV, cutoff_idx_B[:, None], axis=-1)
        logits_BxV = jnp.where(logits_BxV < cutoff_B, -jnp.inf, logits_BxV)
    return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_p", "use_cache"))
def _generate(graphdef, state, ids_BxP, mask_BxP, rng, eos_ids, *, max_new_tokens, temperature, top_p, use_cache):
    model = nnx.merge(graphdef, state)
    B, P = ids_BxP.shape
    T = P + max_new_tokens
    buf_BxT = jnp.zeros((B, T), jnp.int32).at[:, :P].set(ids_BxP)
    bmask_BxT = jnp.zeros((B, T), jnp.int32).at[:, :P].set(mask_BxP)
    done_B = jnp.zeros((B,), bool)

    if use_cache:
        cache = model.init_cache(B, T)
        h_BxPxD, cache = model(ids_BxP, mask_BxP, cache=cache)
        last_logits_BxV = model.logits(h_BxPxD[:, -1])
    else:
        cache = None
        h_BxTxD, _ = model(buf_BxT, bmask_BxT)
        last_logits_BxV = model.logits(h_BxTxD[:, P - 1])

    def body(i, carry):
        buf_BxT, bmask_BxT, done_B, cache, logits_BxV, rng = carry
        rng, sub = jax.random.split(rng)
        tok_B = _pick(logits_BxV, sub, temperature, top_p)
        tok_B = jnp.where(done_B, eos_ids[0], tok_B)
        pos = P + i
        buf_BxT = jax.lax.dynamic_update_slice_in_dim(buf_BxT, tok_B[:, None], pos, axis=1)
        bmask_BxT = jax.lax.dynamic_update_slice_in_dim(bmask_BxT, jnp.ones((B, 1), jnp.int32), pos, axis=1)
        done_B = done_B | jnp.isin(tok_B, eos_ids)
        if use_cache:
            h_Bx1xD, cache = model(tok_B[:, None], jnp.ones((B, 1), jnp.int32), cache=cache)
            logits_BxV = model.logits(h_Bx1xD[:, 0])
        else:
            h_BxTxD, _ = model(buf_BxT, bmask_BxT)
            logits_BxV = model.logits(jax.lax.dynamic_index_in_dim(h_BxTxD, pos, axis=1, keepdims=False))
        return buf_BxT, bmask_BxT, done_B, cache, logits_BxV, rng

    carry = (buf_BxT, bmask_BxT, done_B, cache, last_logits_BxV, rng)
    buf_BxT, *_ = jax.lax.fori_loop(0, max_new_tokens, body, carry)
    return buf_BxT[:, P:]


@functools.partial(jax.jit, static_argnames=("graphdef", "total"))
def _prefill(graphdef, state, ids_BxP, mask_BxP, *, total):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(ids_BxP.shape[0], total)
    h_BxPxD, cache = model(ids_BxP, mask_BxP, cache=cache)
    return model.logits(h_BxPxD[:, -1]), cache


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "top_p"))
def _decode_step(graphdef, state, logits_BxV, bias_V, cache, rng, *, temperature, top_p):
    """The next token from ``logits_BxV + bias_V``, and the logits after it."""
    model = nnx.merge(graphdef, state)
    tok_B = _pick(logits_BxV + bias_V, rng, temperature, top_p)
    h_Bx1xD, cache = model(tok_B[:, None], jnp.ones((tok_B.shape[0], 1), jnp.int32), cache=cache)
    return tok_B, model.logits(h_Bx1xD[:, 0]), cache


def _check(max_new_tokens: int, temperature: float, top_p: float) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")


def _prompts(input_ids_BxP, attention_mask_BxP) -> tuple[Array, Array]:
    """The prompts' ids and mask as int32 arrays (an all-ones mask by default); checks the left padding."""
    ids = jnp.asarray(input_ids_BxP, jnp.int32)
    mask = jnp.ones_like(ids) if attention_mask_BxP is None else jnp.asarray(attention_mask_BxP, jnp.int32)
    if bool((mask[:, -1] == 0).any()):
        raise ValueError("prompts must be left-padded (the last column of attention_mask must be 1)")
    return ids, mask


def _eos_list(eos_token_id: int | list[int] | None) -> list[int]:
    return [-1] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))


def stream_tokens(model: nnx.Module | tuple, input_ids_BxP, attention_mask_BxP=None, *, max_new_tokens: int = 32,
                  temperature: float = 0.0, top_p: float = 1.0, eos_token_id: int | list[int] | None = None,
                  seed: int = 0, min_new_tokens: int = 0) -> Iterator[np.ndarray]:
    """The new tokens one step at a time (a B-vector per step, on the host): the tokens
    :func:`generate` returns, for streaming. It stops once every row has produced an end token
    (finished rows repeat the first end token meanwhile) or after ``max_new_tokens``.
    ``min_new_tokens`` keeps the end tokens out of the first steps. ``model`` may be an
    ``nnx.split`` pair, so that concurrent callers share one split. Prompts must be left-padded."""
    _check(max_new_tokens, temperature, top_p)
    graphdef, state = model if isinstance(model, tuple) else nnx.split(model)
    ids, mask = _prompts(input_ids_BxP, attention_mask_BxP)
    eos = _eos_list(eos_token_id)
    logits_BxV, cache = _prefill(graphdef, state, ids, mask, total=ids.shape[1] + max_new_tokens)
    V = logits_BxV.shape[-1]
    no_bias = jnp.zeros((V,), logits_BxV.dtype)
    banned = [e for e in eos if 0 <= e < V]
    ban = no_bias.at[jnp.asarray(banned, jnp.int32)].set(-jnp.inf) if banned else no_bias
    rng = jax.random.key(seed)
    done_B = np.zeros(ids.shape[0], bool)
    for i in range(max_new_tokens):
        rng, sub = jax.random.split(rng)
        tok_B, logits_BxV, cache = _decode_step(graphdef, state, logits_BxV, ban if i < min_new_tokens else no_bias,
                                                cache, sub, temperature=float(temperature), top_p=float(top_p))
        tok_B = np.where(done_B, eos[0], np.asarray(tok_B))
        done_B |= np.isin(tok_B, eos)
        yield tok_B
        if done_B.all():
            return


def generate(model: nnx.Module, input_ids_BxP, attention_mask_BxP=None, *, max_new_tokens: int = 32,
             temperature: float = 0.0, top_p: float = 1.0, eos_token_id: int | list[int] | None = None, seed: int = 0,
             use_cache: bool = True) -> Array:
    """New tokens (B × max_new_tokens). ``temperature == 0`` is greedy. A row stops at any of the
    ``eos_token_id`` tokens and is padded with the first of them afterwards. Prompts must be left-padded."""
    _check(max_new_tokens, temperature, top_p)
    ids, mask = _prompts(input_ids_BxP, attention_mask_BxP)
    graphdef, state = nnx.split(model)
    eos = _eos_list(eos_token_id)
    return _generate(graphdef, state, ids, mask, jax.random.key(seed), jnp.asarray(eos, jnp.int32),
                     max_new_tokens=max_new_tokens, temperature=float(temperature), top_p=float(top_p),
                     use_cache=use_cache)


END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")  # chat-turn ends of the Llama-family tokenizers


def end_tokens(tokenizer, stop=()) -> list[int]:
    """The ids that end a reply: the tokenizer's end tokens, and each ``stop`` string that is one token."""
    eos = {i for i in (tokenizer.eos_token_id,) if i is not None}
    vocab = tokenizer.get_vocab()
    eos |= {vocab[name] for name in END_TOKENS if name in vocab}
    for s_ in stop:
        one = tokenizer(s_, add_special_tokens=False)["input_ids"]
        if len(one) == 1:
            eos.add(one[0])
    return sorted(eos)


def left_padded(tokenizer, enc: list[list[int]], length: int | None = None) -> tuple[list[list[int]], list[list[int]]]:
    """Token id lists left-padded to ``length`` (default: the length bucket of the longest) and their masks."""
    enc = [e or [tokenizer.bos_token_id or tokenizer.eos_token_id or 0] for e in enc]
    P = length or bucket_length(max(len(e) for e in enc))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return [[pad] * (P - len(e)) + e for e in enc], [[0] * (P - len(e)) + [1] * len(e) for e in enc]


def cut_at_stop(text: str, stop) -> str:
    """``text`` up to the first occurrence of any ``stop`` string."""
    for s_ in stop:
        if s_ and s_ in text:
            text = text[: text.index(s_)]
    return text


def generate_text(model: nnx.Module, tokenizer, prompts: list[str], *, max_new_tokens: int = 64,
                  temperature: float = 0.0, top_p: float = 1.0, stop: list[str] | tuple[str, ...] = (),
                  chat: bool | None = None, seed: int = 0, max_prompt_tokens: int = 1024) -> list[str]:
    """Replies to text prompts. ``chat`` (default: when the tokenizer has a chat template) wraps
    each prompt as a user turn with the generation prompt. Generation stops at the tokenizer's end
    tokens and at any ``stop`` string that is one token; the text is cut at the first ``stop``
    string of any length. Prompts are left-padded to a length bucket (few compiles)."""
    if chat is None:
        chat = bool(getattr(tokenizer, "chat_template", None))
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             if chat else p for p in prompts]
    enc = [tokenizer(t, add_special_tokens=not chat, truncation=True, max_length=max_prompt_tokens)["input_ids"]
           for t in texts]
    ids, mask = left_padded(tokenizer, enc)
    eos = end_tokens(tokenizer, stop)
    out = generate(model, ids, mask, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                   eos_token_id=eos or None, seed=seed)
    replies = []
    for row in jax.device_get(out).tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        replies.append(cut_at_stop(tokenizer.decode(row[:cut], skip_special_tokens=True), stop))
    return replies
