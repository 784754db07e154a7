"""Tokenisation, packing and deterministic, checkpointable batch iterators.

An iterator's whole state is a small dict (epoch, index); the engine saves it with the model, and
a restored iterator yields exactly the batches that would have come next. Per-batch randomness
(masking) is seeded from (seed, epoch, index), so it resumes exactly too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

from autogpt_jax.buckets import BUCKETS, bucket_length
from autogpt_jax.data import masking


def tokenize(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Token ids of each whole text without special tokens (for packing)."""
    return encode(tokenizer, texts, None, add_special_tokens=False)


@dataclasses.dataclass(frozen=True)
class Packed:
    input_ids: np.ndarray  # N × L
    attention_mask: np.ndarray  # N × L
    maskable: np.ndarray  # N × L: real, non-special tokens
    boost: np.ndarray | None = None  # N × L: tokens prompt-aware masking favours


def pack(docs: list[np.ndarray], seq_len: int, *, style: str, bos_id: int | None, eos_id: int | None,
         pad_id: int = 0) -> Packed:
    """Concatenate documents into one stream and cut it into full-length blocks (no padding waste).

    ``style="bert"``: each block is [CLS] chunk [SEP] with documents separated by [SEP] inside the
    stream. ``style="gpt"``: documents separated by EOS, blocks cut straight from the stream.
    """
    if style not in ("bert", "gpt"):
        raise ValueError(f"pack style must be bert or gpt, got {style!r}")
    sep = eos_id
    parts = []
    special_parts = []
    for d in docs:
        if d.size == 0:
            continue
        parts.append(d)
        special_parts.append(np.zeros(d.size, bool))
        if sep is not None:
            parts.append(np.asarray([sep], np.int32))
            special_parts.append(np.ones(1, bool))
    if not parts:
        raise ValueError("no text to pack: every document is empty after tokenisation")
    stream = np.concatenate(parts)
    special = np.concatenate(special_parts)
    body = seq_len - 2 if style == "bert" else seq_len
    n = max(1, stream.size // body)
    if stream.size < body:  # a tiny corpus still gives one (padded) block
        stream = np.pad(stream, (0, body - stream.size), constant_values=pad_id)
        special = np.pad(special, (0, body - special.size), constant_values=True)
        real = np.zeros(body, bool)
        real[: sum(p.size for p in parts)] = True
    else:
        real = np.ones(n * body, bool)
    ids = stream[: n * body].reshape(n, body)
    spec = special[: n * body].reshape(n, body)
    real = real[: n * body].reshape(n, body)
    if style == "bert":
        col = lambda v: np.full((n, 1), v, np.int32)  # noqa: E731
        ids = np.concatenate([col(bos_id), ids, col(eos_id)], axis=1)
        spec = np.concatenate([np.ones((n, 1), bool), spec, np.ones((n, 1), bool)], axis=1)
        real = np.concatenate([np.ones((n, 1), bool), real, np.ones((n, 1), bool)], axis=1)
    return Packed(ids.astype(np.int32), real.astype(np.int32), real & ~spec)


class EpochIterator:
    """Shuffled indices, epoch after epoch, in fixed-size batches; ``state()``/``restore()`` make it
    resumable. Every process computes the same global order."""

    def __init__(self, n: int, batch_size: int, seed: int, *, shuffle: bool = True):
        if n < 1:
            raise ValueError("cannot iterate over an empty dataset")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.epoch = 0
        self.index = 0

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next_indices(self) -> tuple[np.ndarray, tuple[int, int]]:
        """The next batch's indices and the (epoch, index) position they were taken from. Small
        datasets wrap around (a batch may span two epochs)."""
        where = (self.epoch, self.index)
        out = []
        while len(out) < self.batch_size:
            order = self._order(self.epoch)
            take = order[self.index:self.index + self.batch_size - len(out)]
            out.extend(take.tolist())
            self.index += take.size
            if self.index >= self.n:
                self.epoch, self.index = self.epoch + 1, 0
        return np.asarray(out, np.int64), where

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: dict[str, Any]):
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class PretrainBatches:
    """Packed blocks → MLM-masked (BERT) or plain (GPT-2) batches, deterministic and resumable."""

    def __init__(self, packed: Packed, batch_size: int, seed: int, *, objective: str, tokenizer=None,
                 mask_rate: float = 0.15, masking_mode: str = "whole_word", shuffle: bool = True,
                 boost_rate: float = 0.5):
        self.packed = packed
        self.it = EpochIterator(packed.input_ids.shape[0], batch_size, seed, shuffle=shuffle)
        self.seed = seed
        self.objective = objective
        self.mask_rate = mask_rate
        self.boost_rate = boost_rate
        if objective == "mlm":
            if tokenizer is None or tokenizer.mask_token_id is None:
                raise ValueError("MLM needs a tokenizer with a mask token")
            self.mask_id = tokenizer.mask_token_id
            self.vocab_size = len(tokenizer)
            self.continuation = masking.continuation_table(tokenizer) if masking_mode in ("whole_word", "prompt_aware") \
                else None
            special = set(tokenizer.all_special_ids)
            self.random_ids = np.asarray([i for i in range(self.vocab_size) if i not in special], np.int32)
        self.slots = masking.num_slots(packed.input_ids.shape[1], mask_rate)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        idx, (epoch, index) = self.it.next_indices()
        ids = self.packed.input_ids[idx]
        batch = {"input_ids": ids, "attention_mask": self.packed.attention_mask[idx]}
        if self.objective == "mlm":
            rng = np.random.default_rng([self.seed, 1, epoch, index])
            batch.update(masking.mask_tokens(ids, self.packed.maskable[idx], rng, rate=self.mask_rate,
                                             mask_id=self.mask_id, vocab_size=self.vocab_size,
                                             num_predictions=self.slots, continuation=self.continuation,
                                             random_ids=self.random_ids,
                                             boost_BxL=None if self.packed.boost is None else self.packed.boost[idx],
                                             boost_rate=self.boost_rate))
        return batch

    def state(self) -> dict[str, int]:
        return self.it.state()

    def restore(self, state: dict[str, Any]):
        self.it.restore(state)


# --------------------------------------------------------------------------------------------
# classification / scoring batches: cached tokenisation, length buckets
# --------------------------------------------------------------------------------------------

# Evaluation sorts inputs by length, so nearly every batch fills one bucket: finer buckets cut the
# padding (a decoder prompt of 40 tokens pads to 48, not 64) for a few more compiles.
EVAL_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)

_ENCODE_CACHE: dict[tuple, list[np.ndarray]] = {}


def encode(tokenizer, texts: list[str], max_length: int | None, *, add_special_tokens: bool = True) -> list[np.ndarray]:
    """Token ids per text, truncated to ``max_length`` (None: whole texts); fast batched
    tokenisation, memoised per (tokenizer, max_length, texts) so repeated stages and seeds do not
    re-tokenise."""
    import hashlib

    texts = list(texts)  # a datasets Column is lazy: materialise once
    h = hashlib.sha1("\x00".join(texts).encode("utf-8", "surrogatepass")).hexdigest()
    key = (getattr(tokenizer, "name_or_path", id(tokenizer)), tokenizer.vocab_size, max_length, add_special_tokens, h)
    hit = _ENCODE_CACHE.get(key)
    if hit is not None:
        return hit
    out: list[np.ndarray] = []
    for i in range(0, len(texts), 4096):
        enc = tokenizer(texts[i:i + 4096], add_special_tokens=add_special_tokens, truncation=max_length is not None,
                        max_length=max_length, return_attention_mask=False, return_token_type_ids=False,
                        verbose=False)
        out.extend(np.asarray(ids, np.int32) for ids in enc["input_ids"])
    if len(_ENCODE_CACHE) > 64:
        _ENCODE_CACHE.clear()
    _ENCODE_CACHE[key] = out
    return out


def pad_batch(seqs: list[np.ndarray], pad_id: int, *, buckets: tuple[int, ...] = BUCKETS,
              side: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """(ids, attention_mask), padded to the bucket of the longest sequence."""
    L = bucket_length(max(len(s) for s in seqs), buckets)
    ids = np.full((len(seqs), L), pad_id, np.int32)
    mask = np.zeros((len(seqs), L), np.int32)
    for i, s in enumerate(seqs):
        if side == "right":
            ids[i, :len(s)], mask[i, :len(s)] = s, 1
        else:
            ids[i, L - len(s):], mask[i, L - len(s):] = s, 1
    return ids, mask


class ExampleBatches:
    """Shuffled, resumable batches of pre-tokenised examples with per-example fields.

    ``fields`` maps a name to one value per example (labels, mask positions, ...); token sequences
    are padded to a length bucket.
    """

    def __init__(self, seqs: list[np.ndarray], fields: dict[str, np.ndarray], batch_size: int, seed: int, *,
                 pad_id: int, shuffle: bool = True, buckets: tuple[int, ...] = BUCKETS):
        if not seqs:
            raise ValueError("no examples to batch")
        self.seqs, self.fields, self.pad_id, self.buckets = seqs, fields, pad_id, buckets
        self.it = EpochIterator(len(seqs), batch_size, seed, shuffle=shuffle)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        idx, _ = self.it.next_indices()
        return self.batch(idx)

    def batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        ids, mask = pad_batch([self.seqs[i] for i in idx], self.pad_id, buckets=self.buckets)
        return {"input_ids": ids, "attention_mask": mask, **{k: np.asarray(v)[idx] for k, v in self.fields.items()}}

    def state(self) -> dict[str, int]:
        return self.it.state()

    def restore(self, state: dict[str, Any]):
        self.it.restore(state)


def first_fit(lengths: list[int], row_len: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``row_len`` tokens (first fit, longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if order and lengths[order[0]] > row_len:
        raise ValueError(f"an example of {lengths[order[0]]} tokens does not fit a packed row of {row_len}")
    rows: list[list[int]] = []
    used: list[int] = []
    for i in order:
        r = next((r for r, u in enumerate(used) if u + lengths[i] <= row_len), None)
        if r is None:
            rows.append([]), used.append(0)
            r = len(rows) - 1
        rows[r].append(i)
        used[r] += lengths[i]
    return rows


def pack_rows(seqs: list[np.ndarray], pos: np.ndarray, rows: list[list[int]], n_rows: int, row_len: int, pad_id: int
              ) -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]:
    """The packed arrays (input_ids, attention_mask, positions from 0 per example, segments: 0 =
    padding, else 1 + the example's slot in its row) of ``rows`` (indices into ``seqs``) in
    ``n_rows`` rows, and (example, flat row × row_len index of its ``pos``) in row order."""
    ids = np.full((n_rows, row_len), pad_id, np.int32)
    mask, positions, segments = (np.zeros((n_rows, row_len), np.int32) for _ in range(3))
    labels: list[tuple[int, int]] = []
    for r, members in enumerate(rows):
        off = 0
        for slot, i in enumerate(members):
            n = len(seqs[i])
            ids[r, off:off + n] = seqs[i]
            mask[r, off:off + n] = 1
            positions[r, off:off + n] = np.arange(n)
            segments[r, off:off + n] = slot + 1
            labels.append((i, r * row_len + off + int(pos[i])))
            off += n
    return {"input_ids": ids, "attention_mask": mask, "positions": positions, "segments": segments}, labels


class PackedExampleBatches(ExampleBatches):
    """Decoder prompt batches packed into rows: the examples of a batch lie end to end (first-fit,
    longest first) in rows of ``row_len`` tokens, each attending only to itself (and the prefix
    that every row shares) at its own positions, so the step computes few padding tokens. The row
    count is the fewest that hold the batch, rounded up to ``row_multiple``; shapes, and so
    compilations, stay few.

    Yields the arrays of ``pack_rows``, label_index (flat row × row_len index of each example's
    ``pos_field`` position, in batch order) and the other fields.
    """

    def __init__(self, seqs: list[np.ndarray], fields: dict[str, np.ndarray], batch_size: int, seed: int, *,
                 pad_id: int, row_len: int, row_multiple: int = 1, pos_field: str = "mask_pos"):
        super().__init__(seqs, fields, batch_size, seed, pad_id=pad_id)
        first_fit([len(s_) for s_ in seqs], row_len)  # every example must fit a row
        self.row_len, self.row_multiple, self.pos_field = row_len, row_multiple, pos_field

    def batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        seqs = [self.seqs[i] for i in idx]
        pos = np.asarray(self.fields[self.pos_field])[idx]
        rows = first_fit([len(s_) for s_ in seqs], self.row_len)
        n_rows = -(-len(rows) // self.row_multiple) * self.row_multiple
        arrays, labels = pack_rows(seqs, pos, rows, n_rows, self.row_len, self.pad_id)
        label_index = np.zeros(len(idx), np.int32)
        for j, flat in labels:
            label_index[j] = flat
        return {**arrays, "label_index": label_index,
                **{k: np.asarray(v)[idx] for k, v in self.fields.items() if k != self.pos_field}}


def packed_eval_batches(seqs: list[np.ndarray], pos: np.ndarray, rows: int, row_len: int, pad_id: int
                        ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Every example once, packed end to end (first-fit, longest first) into ``rows`` rows of
    ``row_len`` tokens per batch, in the layout of ``PackedExampleBatches``; yields the original
    indices with each batch (label_index and the indices are padded to a power of two, -1 marks
    the padding)."""
    packed = first_fit([len(s_) for s_ in seqs], row_len)
    for start in range(0, len(packed), rows):
        arrays, labels = pack_rows(seqs, pos, packed[start:start + rows], rows, row_len, pad_id)
        n_pad = 1 << (len(labels) - 1).bit_length()
        label_index, out_idx = np.zeros(n_pad, np.int32), np.full(n_pad, -1, np.int64)
        for k, (i, flat) in enumerate(labels):
            label_index[k], out_idx[k] = flat, i
        yield out_idx, {**arrays, "label_index": label_index}


def eval_batch_size(n: int, batch_size: int) -> int:
    """The batch size for evaluating ``n`` examples: a power of two of at least 8 (few compiled
    shapes), at most ``batch_size``."""
    return min(batch_size, max(8, 1 << (n - 1).bit_length()))


def eval_batches(seqs: list[np.ndarray], batch_size: int, pad_id: int, *,
                 buckets: tuple[int, ...] = EVAL_BUCKETS) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Every example once, sorted by length so each batch pads to a small bucket; yields the
    original indices with each batch (the last batch is padded up to ``batch_size`` with copies of
    its first example; callers drop rows whose index is -1)."""
    order = np.argsort([len(s) for s in seqs], kind="stable")
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        real = idx.size
        if real < batch_size:
            idx = np.concatenate([idx, np.repeat(idx[:1], batch_size - real)])
        ids, mask = pad_batch([seqs[j] for j in idx], pad_id, buckets=buckets)
        out_idx = idx.copy()
        out_idx[real:] = -1
        yield out_idx, {"input_ids": ids, "attention_mask": mask}
