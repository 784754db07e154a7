"""Decoders scoring label words of several tokens: the hidden states with a shared prompt prefix
run once into a broadcast cache, the words as one tree of continuations after the prompt, and each
word's log-likelihood from one forward pass (used by ``objectives.prompt_class_logits``)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def decoder_hidden(model, input_ids_BxL: Array, attention_mask_BxL: Array, rngs=None, prefix_P: Array | None = None,
                    **kw) -> Array:
    """A decoder's hidden states B×L×D, the shared prefix (if any) run once into a broadcast cache."""
    if prefix_P is None or prefix_P.shape[0] == 0:
        return model(input_ids_BxL, attention_mask_BxL, rngs=rngs, **kw)[0]
    B, L = input_ids_BxL.shape
    P = prefix_P.shape[0]
    cache = model.init_cache(1, P + L)
    _, cache = model(prefix_P[None], jnp.ones((1, P), jnp.int32), cache=cache, rngs=rngs)
    cache = cache.broadcast(B)
    return model(input_ids_BxL, attention_mask_BxL, cache=cache, rngs=rngs, **kw)[0]


def table_tree(label_ids) -> ContinuationTree | None:
    """The continuation tree of a decoder's multi-token label-word table (C × W × T, T > 1), else None."""
    a = np.asarray(label_ids)
    return continuation_tree(a.reshape(-1, a.shape[-1])) if a.ndim == 3 and a.shape[-1] > 1 else None


class ContinuationTree(NamedTuple):
    """N label words of up to T tokens as one tree of continuations after the prompt (built from a
    concrete table by :func:`continuation_tree`; its arrays may then be traced).

    cont_M, depth_M: the M tree nodes -- every distinct proper prefix of a word, by its last token
    and its distance from the prompt's end (words that share a beginning share its nodes);
    anc_MxM: node m attends to node a (a is m or an ancestor); read_NxT: where word n's token t is
    predicted (0: the prompt's last position, 1 + m: node m); vocab_U: the distinct tokens of the
    words; tok_NxT: each token's index in vocab_U (-1: padding)."""

    cont_M: Array
    depth_M: Array
    anc_MxM: Array
    read_NxT: Array
    vocab_U: Array
    tok_NxT: Array


def continuation_tree(words_NxT) -> ContinuationTree:
    w = np.asarray(words_NxT)
    N, T = w.shape
    node: dict[tuple[int, ...], int] = {}
    cont, depth, parent = [], [], []
    read = np.zeros((N, T), np.int32)
    for n in range(N):
        seq = [int(x) for x in w[n] if x >= 0]
        for t in range(1, len(seq)):
            key = tuple(seq[:t])
            if key not in node:
                node[key] = len(cont)
                cont.append(seq[t - 1])
                depth.append(t - 1)
                parent.append(node.get(key[:-1], -1))
            read[n, t] = 1 + node[key]
    anc = np.zeros((len(cont), len(cont)), bool)
    for m in range(len(cont)):
        a = m
        while a >= 0:
            anc[m, a] = True
            a = parent[a]
    vocab, inv = np.unique(np.where(w >= 0, w, -1), return_inverse=True)
    tok = np.where(w >= 0, inv.reshape(N, T) - int(vocab[0] < 0), -1).astype(np.int32)
    return ContinuationTree(np.asarray(cont, np.int32), np.asarray(depth, np.int32), anc, read,
                            vocab[vocab >= 0].astype(np.int32), tok)


def word_logprobs(model, input_ids_BxL: Array, attention_mask_BxL: Array, pos_B: Array, tree: ContinuationTree,
                  rngs=None, prefix_P: Array | None = None) -> Array:
    """log P(word | prompt) B×N of the tree's N words as the decoder's continuation after position
    ``pos_B``: the sum of each token's log-probability, each step's distribution taken over the
    words' own tokens (U of them) rather than the whole vocabulary -- as single-token words are
    scored (their logits, softmaxed over the classes) -- so the LM head costs U rows, not V.

    One forward pass: the tree's M nodes are appended to each row and attend to the prompt and to
    their ancestors only, at the positions they would have after the prompt; words that begin
    alike share those nodes.
    """
    B, L = input_ids_BxL.shape
    cont_M, depth_M, anc_MxM, read_NxT, vocab_U, tok_NxT = (jnp.asarray(a) for a in tree)
    M = cont_M.shape[0]
    ids = jnp.concatenate([input_ids_BxL, jnp.broadcast_to(cont_M[None], (B, M)).astype(input_ids_BxL.dtype)], 1)
    mask = jnp.concatenate([attention_mask_BxL.astype(jnp.int32), jnp.ones((B, M), jnp.int32)], 1)
    pos_BxL = jnp.maximum(jnp.cumsum(attention_mask_BxL.astype(jnp.int32), axis=1) - 1, 0)
    positions = jnp.concatenate([pos_BxL, pos_B[:, None].astype(jnp.int32) + 1 + depth_M[None]], 1)
    causal_LxL = jnp.tril(jnp.ones((L, L), bool))
    block = jnp.block([[causal_LxL, jnp.zeros((L, M), bool)], [jnp.ones((M, L), bool), anc_MxM]])
    h_BxSxD = decoder_hidden(model, ids, mask, rngs, prefix_P, positions_BxL=positions,
                              block_mask_BxLxL=jnp.broadcast_to(block[None], (B, L + M, L + M)))
    h_first_BxD = jnp.take_along_axis(h_BxSxD, pos_B[:, None, None].astype(jnp.int32), axis=1)[:, 0]
    h_Bx1MxD = jnp.concatenate([h_first_BxD[:, None], h_BxSxD[:, L:]], axis=1)
    logp_Bx1MxU = jax.nn.log_softmax(model.logits(h_Bx1MxD, vocab_U), axis=-1)
    lp_BxNxT = logp_Bx1MxU[:, read_NxT, jnp.maximum(tok_NxT, 0)]
    return jnp.sum(jnp.where(tok_NxT[None] >= 0, lp_BxNxT, 0.0), axis=-1)
