"""MLM masking as pure NumPy functions of (token ids, a seeded generator).

Each sequence gets exactly ``round(rate × maskable tokens)`` prediction targets (at least one),
chosen as single tokens (``random``) or whole words (``whole_word``: a word's ##-continuation
pieces are masked with it). Targets are replaced 80% by [MASK], 10% by a random token and 10% left
as they are. The result has a fixed number P of prediction slots per sequence, so the loss
can gather just those hidden states; unused slots have weight 0.

Prompt-aware masking (``boost``) masks chosen words (the label word in a prompted sentence, task
words such as sentiment or intent words) each with probability ``boost_rate``, independently of
the others; the rest of the budget is filled from the remaining words at random.
"""

from __future__ import annotations

import math

import numpy as np


def num_slots(seq_len: int, rate: float) -> int:
    """Prediction slots per sequence: enough for rate × seq_len, rounded up, plus one for rounding."""
    return max(1, math.ceil(seq_len * rate) + 1)


def word_starts(ids_L: np.ndarray, continuation: np.ndarray | None) -> np.ndarray:
    """Boolean: token starts a word (True for every token when no continuation table is given)."""
    if continuation is None:
        return np.ones(ids_L.shape, bool)
    return ~continuation[ids_L]


def mask_tokens(
    ids_BxL: np.ndarray,
    maskable_BxL: np.ndarray,
    rng: np.random.Generator,
    *,
    rate: float,
    mask_id: int,
    vocab_size: int,
    num_predictions: int | None = None,
    continuation: np.ndarray | None = None,
    boost_BxL: np.ndarray | None = None,
    boost_rate: float = 0.5,
    random_ids: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Mask a batch. Returns input_ids (masked), mlm_positions, mlm_labels, mlm_weights.

    ``maskable_BxL``: True for real, non-special tokens. ``continuation``: bool[vocab], True for
    word-continuation pieces (``##x``); enables whole-word masking. ``boost_BxL``: tokens to favour
    (prompt-aware masking). ``random_ids``: the ids a random replacement may take (default: all).
    """
    B, L = ids_BxL.shape
    P = num_predictions or num_slots(L, rate)
    out_ids = ids_BxL.copy()
    positions = np.zeros((B, P), np.int32)
    labels = np.zeros((B, P), np.int32)
    weights = np.zeros((B, P), np.float32)
    for b in range(B):
        ids = ids_BxL[b]
        ok = maskable_BxL[b].astype(bool)
        n_ok = int(ok.sum())
        if n_ok == 0:
            continue
        target = min(P, max(1, int(round(rate * n_ok))))
        starts = word_starts(ids, continuation) & ok
        # A word = a start token plus the continuation tokens after it.
        start_idx = np.flatnonzero(starts)
        if start_idx.size == 0:
            start_idx = np.flatnonzero(ok)
            starts = ok
        ends = np.append(start_idx[1:], L)
        words = []
        for s, e in zip(start_idx, ends):
            span = [s]
            for t in range(s + 1, e):
                if ok[t] and not starts[t]:
                    span.append(t)
                else:
                    break
            words.append(span)
        order = rng.permutation(len(words))
        if boost_BxL is not None:
            boosted = np.array([bool(boost_BxL[b, words[i][0]]) for i in order], bool)
            picked = boosted & (rng.random(len(order)) < boost_rate)
            order = np.concatenate([order[picked], order[~boosted]])  # unpicked boosted words stay unmasked
        chosen: list[int] = []
        for i in order:
            span = words[i]
            if len(chosen) + len(span) > target:
                if chosen:
                    continue
                span = span[:target]
            chosen.extend(span)
            if len(chosen) >= target:
                break
        chosen_arr = np.sort(np.asarray(chosen, np.int32))
        n = chosen_arr.size
        positions[b, :n] = chosen_arr
        labels[b, :n] = ids[chosen_arr]
        weights[b, :n] = 1.0
        u = rng.random(n)
        replace_mask = u < 0.8
        replace_rand = (u >= 0.8) & (u < 0.9)
        out_ids[b, chosen_arr[replace_mask]] = mask_id
        if replace_rand.any():
            pool = random_ids if random_ids is not None else None
            k = int(replace_rand.sum())
            rand = pool[rng.integers(0, pool.size, k)] if pool is not None else rng.integers(0, vocab_size, k)
            out_ids[b, chosen_arr[replace_rand]] = rand
    return {"input_ids": out_ids, "mlm_positions": positions, "mlm_labels": labels, "mlm_weights": weights}


def continuation_table(tokenizer) -> np.ndarray | None:
    """bool[vocab]: True for WordPiece continuation pieces (``##``). None for byte-level BPE
    tokenizers, where words are marked by a leading-space symbol instead (then every token starting
    without ``Ġ``/``▁`` continues a word)."""
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    table = np.zeros(size, bool)
    toks = list(vocab.items())
    if any(t.startswith("##") for t, _ in toks[:5000] if len(t) > 2):
        for t, i in toks:
            table[i] = t.startswith("##") and len(t) > 2
        return table
    if any(t.startswith(("Ġ", "▁")) for t, _ in toks[:5000]):
        for t, i in toks:
            table[i] = not t.startswith(("Ġ", "▁")) and t.isalnum()
        return table
    return None
