"""Batched, jit-compiled class probabilities for prompt (cloze) and head models.

One compiled function per (batch size, length bucket); inputs are sorted by length so padding
stays small, and results come back in input order. On a mesh, each batch is split over its data
axes: every device (of every process) scores its share, and the logits are gathered in input order.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from autogpt_jax.data import batching
from autogpt_jax.models.build import is_decoder
from autogpt_jax.prompts.templates import Template
from autogpt_jax.training import objectives
from autogpt_jax.training import sharding as shd

MEMO = 4  # the logits of the last few text lists each classifier keeps (evaluation reads them twice)


@functools.partial(jax.jit, static_argnames=("graphdef", "mode", "pooling", "scale"))
def _class_logits(graphdef, state, input_ids, attention_mask, mask_pos, label_ids, label_wts, protos, prefix, tree,
                  *, mode, pooling, scale):
    # Module-level and keyed on the graph definition: every Classifier over the same architecture
    # (each evaluation during fine-tuning builds one) reuses the compiled function per shape.
    model = nnx.merge(graphdef, state)
    if mode == "similarity":
        return objectives.similarity_logits(model, input_ids, attention_mask, protos, scale)
    if mode == "prompt":
        return objectives.prompt_class_logits(model, input_ids, attention_mask, mask_pos, label_ids, label_wts,
                                              prefix_P=prefix, tree=tree)
    h = model(input_ids, attention_mask)
    return model.classify(h, attention_mask, pooling=pooling)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _packed_logits(graphdef, state, batch, label_ids, label_wts, prefix):
    return objectives.packed_class_logits(nnx.merge(graphdef, state), batch, label_ids, label_wts, prefix_P=prefix)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _prototypes(graphdef, state, ids, mask, weights):
    return objectives.class_prototypes(nnx.merge(graphdef, state), ids, mask, weights)


@dataclasses.dataclass
class Classifier:
    """A model plus how to read classes from it."""

    model: nnx.Module
    tokenizer: Any
    labels: list[str]
    mode: str  # prompt (cloze at the mask) | similarity (cosine to class descriptions) | head
    template: Template | None = None
    label_word_ids: np.ndarray | None = None  # C × W (encoders) or C × W × T (decoders: each word's tokens)
    label_word_weights: np.ndarray | None = None
    max_length: int = 128
    pooling: str = "mean"
    label_words: list[list[str]] | None = None
    # similarity mode: the class descriptions (ids, mask N × L; weights C × N) and the logit scale
    descriptions: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    scale: float = 20.0
    # decoders with single-token label words: pack the prompts end to end into rows (see
    # data.batching.packed_eval_batches) instead of padding each to a length bucket
    pack: bool = True
    # a fitted autogpt_jax.handover.Handover (temperature + hand-over threshold), when there is one
    handover: Any = None
    # C: added to the logits (a calibration, see autogpt_jax.calibration); None: none
    logit_bias: np.ndarray | None = None
    # score on this mesh, each batch split over its data axes (None: the default device)
    mesh: Any = None

    def __post_init__(self):
        self._memo: dict[int, tuple[tuple[str, ...], np.ndarray]] = {}
        self._graphdef, self._state = nnx.split(self.model)
        self._ids = None if self.label_word_ids is None else jnp.asarray(self.label_word_ids)
        self._wts = None if self.label_word_weights is None else jnp.asarray(self.label_word_weights)
        self._protos = None
        self._prefix = None  # decoders: the prompt prefix shared by every input, run once per batch
        self._tree = None  # decoders' multi-token label words: their continuation tree
        if self.mode == "prompt" and is_decoder(self.model):
            self._prefix = jnp.asarray(self.template.causal_prefix(self.tokenizer))
            self._tree = objectives.table_tree(self.label_word_ids)
        if self.mode == "similarity":
            if self.descriptions is None:
                raise ValueError("similarity mode needs the class descriptions")
            self._protos = _prototypes(self._graphdef, self._state, *map(jnp.asarray, self.descriptions))

    def encode(self, texts: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
        if self.mode == "prompt":
            return prompt_inputs(self.tokenizer, self.model, self.template, texts, self.max_length)[:2]
        seqs = batching.encode(self.tokenizer, list(texts), self.max_length)
        return seqs, np.zeros(len(seqs), np.int32)

    def forget(self) -> None:
        """Drop the memoised logits: the next call scores its texts again."""
        self._memo.clear()

    def logits(self, texts: list[str], batch_size: int = 64, progress: str | None = None) -> np.ndarray:
        """Class logits of ``texts`` (N × C). ``progress``: a progress bar with this label."""
        texts = tuple(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), np.float32)
        hit = self._memo.get(hash(texts))
        if hit is not None and hit[0] == texts:
            raw = hit[1]
        else:
            seqs, mask_pos = self.encode(list(texts))
            out = np.zeros((len(seqs), len(self.labels)), np.float32)
            pad = self.tokenizer.pad_token_id or 0
            with tqdm(total=len(seqs), desc=progress, unit="text", dynamic_ncols=True,
                      disable=progress is None or jax.process_index() != 0) as bar:
                raw = self._logits(seqs, mask_pos, out, pad, batch_size, bar)
            if len(self._memo) >= MEMO:
                self._memo.pop(next(iter(self._memo)))
            self._memo[hash(texts)] = (texts, raw)
        return raw + self.logit_bias if self.logit_bias is not None else raw.copy()

    def _put(self, arrays: dict[str, np.ndarray], rows: int) -> dict[str, jax.Array]:
        if self.mesh is None:
            return {k: jnp.asarray(v) for k, v in arrays.items()}
        return shd.put_rows(arrays, self.mesh, rows)

    def _tables(self) -> tuple:
        tables = (self._ids, self._wts, self._protos, self._prefix, self._tree)
        if self.mesh is None:
            return tables
        rep = shd.replicated(self.mesh)
        return tuple(None if t is None else jax.tree.map(lambda a: jax.device_put(a, rep), t) for t in tables)

    def _logits(self, seqs, mask_pos, out, pad: int, batch_size: int, bar) -> np.ndarray:
        div = 1 if self.mesh is None else shd.batch_divisor(self.mesh)
        ids, wts, protos, prefix, tree = self._tables()
        if self.pack and self._prefix is not None and self._ids.shape[-1] == 1:
            row_len = max(128, batching.bucket_length(max(len(s_) for s_ in seqs), batching.EVAL_BUCKETS))
            # about as many tokens per call as padded batches
            rows = shd.round_up(max(1, batch_size * 64 // row_len), div)
            for idx, b in batching.packed_eval_batches(seqs, mask_pos, rows, row_len, pad):
                lg = shd.to_host(_packed_logits(self._graphdef, self._state, self._put(b, rows), ids, wts, prefix))
                out[idx[idx >= 0]] = lg[idx >= 0]
                bar.update(int((idx >= 0).sum()))
            return out
        bs = shd.round_up(batching.eval_batch_size(len(seqs), batch_size), div)
        for idx, b in batching.eval_batches(seqs, bs, pad):
            real = idx >= 0
            src = np.where(real, idx, idx[0])
            b = self._put({**b, "mask_pos": mask_pos[src]}, bs)
            lg = _class_logits(self._graphdef, self._state, b["input_ids"], b["attention_mask"], b["mask_pos"], ids,
                               wts, protos, prefix, tree, mode=self.mode, pooling=self.pooling, scale=float(self.scale))
            out[idx[real]] = shd.to_host(lg)[real]
            bar.update(int(real.sum()))
        return out

    def probabilities(self, texts: list[str], batch_size: int = 64, progress: str | None = None) -> np.ndarray:
        lg = self.logits(texts, batch_size, progress)
        return np.asarray(jax.nn.softmax(jnp.asarray(lg), axis=-1))


def word_table(tokenizer, model, verb, template: Template) -> tuple[np.ndarray, np.ndarray]:
    """Label-word token ids and weights: every piece at the mask (encoders, C × W), or each word's
    tokens as the continuation of the prompt (decoders, C × W × T, padded with -1)."""
    if is_decoder(model):
        return verb.sequence_table(tokenizer, leading_space=template.space_before_mask)
    return verb.token_table(tokenizer)


def prompt_inputs(tokenizer, model, template: Template, texts: list[str], max_length: int
                  ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray | None]:
    """Token ids of the prompted texts, the position whose prediction is the label word, and, for
    decoders, the shared prefix that the ids leave out (None for encoders)."""
    if not is_decoder(model):
        return (*template.encode(tokenizer, texts, max_length), None)
    prefix = template.causal_prefix(tokenizer)
    return (*strip_prefix(*template.encode(tokenizer, texts, max_length, causal=True), len(prefix)), prefix)


def strip_prefix(seqs: list[np.ndarray], pos: np.ndarray, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Drop the shared ``n``-token prefix from decoder prompts (positions shift with it)."""
    return [s_[n:] for s_ in seqs], pos - n


def predict_records(clf, texts: list[str], batch_size: int = 64, progress: str | None = None) -> list[dict]:
    """One record per text: ``label`` and ``probabilities``; with a hand-over calibration in the
    export, the probabilities are calibrated and ``confidence`` and ``handover`` are added."""
    h = getattr(clf, "handover", None)
    if h is None:
        probs, hand = clf.probabilities(texts, batch_size, progress), None
    else:
        probs, hand = h.decide(clf.logits(texts, batch_size, progress))
    out = []
    for i, p in enumerate(probs):
        r = {"label": clf.labels[int(p.argmax())], "probabilities": {l: float(v) for l, v in zip(clf.labels, p)}}
        if hand is not None:
            r.update(confidence=float(p.max()), handover=bool(hand[i]))
        out.append(r)
    return out


def make_classifier(mode: str, model, tokenizer, labels: list[str], template: Template | None = None, verb=None, *,
                    max_length: int = 128, pooling: str = "mean", scale: float = 20.0, mesh=None) -> Classifier:
    """The classifier of ``mode``: ``prompt`` (label-word scores at the mask or the next token),
    ``similarity`` (cosine to the class descriptions) or ``head`` (the classification head)."""
    ids = wts = desc = None
    if mode == "prompt":
        ids, wts = word_table(tokenizer, model, verb, template)
    elif mode == "similarity":
        desc = verb.description_table(tokenizer, template)
    return Classifier(model, tokenizer, labels, mode, template, ids, wts, max_length=max_length, pooling=pooling,
                      label_words=verb.to_json() if verb is not None else None, descriptions=desc, scale=scale,
                      mesh=mesh)
