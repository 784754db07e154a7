"""Pure losses: ``loss(model, batch, rngs) -> (scalar, aux metrics)``.

Nothing is computed that is thrown away: the MLM loss gathers the hidden states of the masked
positions before projecting to the vocabulary, and the cloze loss projects the mask position onto
the label words only.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from autogpt_jax.models.build import is_decoder
from autogpt_jax.training.continuations import (ContinuationTree, continuation_tree, decoder_hidden,
                                                table_tree, word_logprobs)

Array = jax.Array
Loss = Callable[[nnx.Module, dict, "nnx.Rngs | None"], tuple[Array, dict]]


class Keyed:
    """A function that compares equal to another built from the same values: the compiled train
    step is shared by equal losses (training/steps.py), so a learning-rate grid that rebuilds
    its loss for each point reuses one executable."""

    def __init__(self, fn: Callable, key: tuple):
        self.fn, self.key = fn, key
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __eq__(self, other) -> bool:
        return isinstance(other, Keyed) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


def keyed(fn: Callable, *key) -> Keyed:
    """``fn`` compared by ``key`` (hashable values; arrays are keyed by shape, dtype and bytes)."""
    return Keyed(fn, tuple(array_key(k) if isinstance(k, (np.ndarray, jax.Array)) else k for k in key))


def array_key(x) -> tuple:
    a = np.asarray(x)
    return a.shape, str(a.dtype), a.tobytes()


def weighted_ce(logits_NxC: Array, labels_N: Array, weights_N: Array) -> tuple[Array, Array]:
    """Sum of per-example cross-entropy × weight, and the weight total."""
    ce_N = optax.softmax_cross_entropy_with_integer_labels(logits_NxC.astype(jnp.float32), labels_N)
    w_N = weights_N.astype(jnp.float32)
    return jnp.sum(ce_N * w_N), jnp.sum(w_N)


def task_ce(logits_BxC: Array, batch: dict) -> tuple[Array, Array]:
    """The task loss's sum and count: cross-entropy against ``soft_labels`` (B × C target
    distributions: self-training's pseudo-labels, one-hot for labelled examples) when the batch
    carries them, else against the integer ``labels``; each example weighted by ``weights`` when the
    batch carries them."""
    if "soft_labels" in batch:
        logp_BxC = jax.nn.log_softmax(logits_BxC.astype(jnp.float32), axis=-1)
        ce_B = -jnp.sum(batch["soft_labels"].astype(jnp.float32) * logp_BxC, axis=-1)
        if "weights" in batch:
            return jnp.sum(ce_B * batch["weights"]), jnp.sum(batch["weights"].astype(jnp.float32))
        return jnp.sum(ce_B), jnp.asarray(ce_B.shape[0], jnp.float32)
    # ``weights``: per-example class weights (finetune.balance on an imbalanced label set)
    w_B = batch["weights"] if "weights" in batch else jnp.ones(batch["labels"].shape, jnp.float32)
    return weighted_ce(logits_BxC, batch["labels"], w_B)


def _mean(total: Array, count: Array) -> Array:
    return total / jnp.maximum(count, 1.0)


def mlm_loss(model, batch: dict, rngs=None) -> tuple[Array, dict]:
    """Masked-LM loss over masked positions only.

    batch: input_ids, attention_mask (B×L); mlm_positions, mlm_labels, mlm_weights (B×P, padded
    slots have weight 0).
    """
    h_BxPxD = model(batch["input_ids"], batch["attention_mask"], output_positions_BxP=batch["mlm_positions"], rngs=rngs)
    logits_NxV = model.mlm_logits(h_BxPxD.reshape(-1, h_BxPxD.shape[-1]))
    labels_N = batch["mlm_labels"].reshape(-1)
    total, count = weighted_ce(logits_NxV, labels_N, batch["mlm_weights"].reshape(-1))
    # No accuracy here: an argmax over the vocabulary costs ~2% of a MiniLM training step.
    return _mean(total, count), {"mlm_loss_sum": total, "mlm_count": count}


def clm_loss(model, batch: dict, rngs=None) -> tuple[Array, dict]:
    """Causal-LM loss: predict token t+1 from tokens ≤ t wherever both are real tokens.

    batch: input_ids, attention_mask (B×L).
    """
    h_BxLxD, _ = model(batch["input_ids"], batch["attention_mask"], rngs=rngs)
    logits_BxLxV = model.logits(h_BxLxD[:, :-1])
    labels_BxL = batch["input_ids"][:, 1:]
    w_BxL = batch["attention_mask"][:, 1:] * batch["attention_mask"][:, :-1]
    total, count = weighted_ce(logits_BxLxV.reshape(-1, logits_BxLxV.shape[-1]), labels_BxL.reshape(-1),
                               w_BxL.reshape(-1))
    return _mean(total, count), {"clm_loss_sum": total, "clm_count": count}


def classification_loss(model, batch: dict, rngs=None, *, pooling: str = "pooler") -> tuple[Array, dict]:
    """Cross-entropy of the classifier head. batch: input_ids, attention_mask, labels (B) or soft_labels (B × C)."""
    h = model(batch["input_ids"], batch["attention_mask"], rngs=rngs)
    logits_BxC = model.classify(h, batch["attention_mask"], pooling=pooling, rngs=rngs)
    total, count = task_ce(logits_BxC, batch)
    return _mean(total, count), {"task_loss_sum": total, "count": count}


def prompt_hidden(model, input_ids_BxL: Array, attention_mask_BxL: Array, pos_B: Array, rngs=None,
                  prefix_P: Array | None = None) -> Array:
    """Hidden states B×1×D where the label word is predicted: at the mask (encoders; the last layer
    runs only there) or at the last prompt token, whose next token is the label word (decoders).

    ``prefix_P`` (decoders): token ids that every row starts with and that ``input_ids_BxL`` leaves
    out (chat preamble, instructions). They run once, as one row, into a key/value cache shared by
    the batch; gradients flow through them as through the rest of the sequence.
    """
    if not is_decoder(model):
        return model(input_ids_BxL, attention_mask_BxL, output_positions_BxP=pos_B[:, None], rngs=rngs)
    h_BxLxD = decoder_hidden(model, input_ids_BxL, attention_mask_BxL, rngs, prefix_P)
    return jnp.take_along_axis(h_BxLxD, pos_B[:, None, None].astype(jnp.int32), axis=1)


def prompt_class_logits(model, input_ids_BxL: Array, attention_mask_BxL: Array, pos_B: Array, label_ids: Array,
                        label_wts: Array | None, rngs=None, prefix_P: Array | None = None,
                        tree: ContinuationTree | None = None) -> Array:
    """Class scores B×C of a prompt: the label words' logits at the mask (encoders) or as the next
    token (decoders, ``label_ids`` C×W×T). Decoders' multi-token words (T > 1) score their whole
    log-likelihood (``word_logprobs``; ``tree``: the table's continuation tree, built from a
    concrete table when not given); single-token words their next-token logit."""
    if label_ids.ndim == 3 and label_ids.shape[-1] > 1:
        C, W, T = label_ids.shape
        tree = tree if tree is not None else continuation_tree(np.asarray(label_ids).reshape(C * W, T))
        lp_BxCxW = word_logprobs(model, input_ids_BxL, attention_mask_BxL, pos_B, tree, rngs,
                                 prefix_P).reshape(-1, C, W)
        w_CxW = jnp.ones((C, W)) if label_wts is None else label_wts
        w_CxW = w_CxW / jnp.maximum(w_CxW.sum(-1, keepdims=True), 1e-9)
        return jnp.einsum("bcw,cw->bc", lp_BxCxW, w_CxW)
    ids = label_ids[..., 0] if label_ids.ndim == 3 else label_ids
    h = prompt_hidden(model, input_ids_BxL, attention_mask_BxL, pos_B, rngs, prefix_P)
    return cloze_logits(model, h, jnp.zeros_like(pos_B), ids, label_wts)


def packed_class_logits(model, batch: dict, label_ids: Array, label_wts: Array | None, rngs=None,
                        prefix_P: Array | None = None) -> Array:
    """Class logits B×C of decoder prompts packed into rows (input_ids, attention_mask, positions,
    segments R×L; label_index B): each example attends causally within its own segment and to the
    shared prefix; single-token label words."""
    if label_ids.ndim == 3 and label_ids.shape[-1] > 1:
        raise ValueError("packed batches score single-token label words; multi-token words need unpacked batches")
    seg_RxL = batch["segments"]
    L = seg_RxL.shape[1]
    block = (seg_RxL[:, :, None] == seg_RxL[:, None, :]) & jnp.tril(jnp.ones((L, L), bool))[None]
    h_RxLxD = decoder_hidden(model, batch["input_ids"], batch["attention_mask"], rngs, prefix_P,
                              positions_BxL=batch["positions"], block_mask_BxLxL=block)
    h_Bx1xD = h_RxLxD.reshape(-1, h_RxLxD.shape[-1])[batch["label_index"]][:, None]
    ids = label_ids[..., 0] if label_ids.ndim == 3 else label_ids
    return cloze_logits(model, h_Bx1xD, jnp.zeros(h_Bx1xD.shape[:1], jnp.int32), ids, label_wts)


def vocab_logits(model, h_NxD: Array, vocab_ids=None) -> Array:
    """LM-head logits over all or the given vocabulary rows (MLM head or next-token head)."""
    return model.logits(h_NxD, vocab_ids) if is_decoder(model) else model.mlm_logits(h_NxD, vocab_ids=vocab_ids)


def distill_loss(model, batch: dict, rngs=None, *, pooling: str = "mean") -> tuple[Array, dict]:
    """Cross-entropy of the student's classifier against the teacher's soft labels.

    batch: input_ids, attention_mask, soft_labels (B × C, rows sum to 1).
    """
    h = model(batch["input_ids"], batch["attention_mask"], rngs=rngs)
    logp_BxC = jax.nn.log_softmax(model.classify(h, batch["attention_mask"], pooling=pooling, rngs=rngs), axis=-1)
    ce_B = -jnp.sum(batch["soft_labels"].astype(jnp.float32) * logp_BxC, axis=-1)
    total, count = jnp.sum(ce_B), jnp.asarray(ce_B.shape[0], jnp.float32)
    return _mean(total, count), {"task_loss_sum": total, "count": count}


def cloze_logits(model, h_BxLxD: Array, mask_pos_B: Array, label_word_ids_CxW: Array,
                 label_word_weights_CxW: Array | None = None) -> Array:
    """Class logits at the mask position from the label words' MLM logits.

    ``label_word_ids_CxW``: W label words (or sub-tokens) per class C; a class scores the weighted
    mean of its words' logits (padded word slots get weight 0).
    """
    h_BxD = jnp.take_along_axis(h_BxLxD, mask_pos_B[:, None, None].astype(jnp.int32), axis=1)[:, 0]
    C, W = label_word_ids_CxW.shape
    logits_BxCW = vocab_logits(model, h_BxD, label_word_ids_CxW.reshape(-1))
    logits_BxCxW = logits_BxCW.reshape(-1, C, W)
    if label_word_weights_CxW is None:
        return logits_BxCxW.mean(-1)
    w_CxW = label_word_weights_CxW / jnp.maximum(label_word_weights_CxW.sum(-1, keepdims=True), 1e-9)
    return jnp.einsum("bcw,cw->bc", logits_BxCxW, w_CxW)


def cloze_class_logits(label_word_ids, label_word_weights, prefix_P=None) -> Callable:
    """``fn(model, batch, rngs) -> B × C``: the prompt's class scores on a padded batch
    (input_ids, attention_mask, mask_pos), the label-word table a constant."""
    ids, wts = jnp.asarray(label_word_ids), jnp.asarray(label_word_weights)
    prefix = None if prefix_P is None else jnp.asarray(prefix_P, jnp.int32)
    tree = table_tree(label_word_ids)

    def fn(model, batch: dict, rngs=None) -> Array:
        return prompt_class_logits(model, batch["input_ids"], batch["attention_mask"], batch["mask_pos"], ids, wts,
                                   rngs, prefix, tree)

    return keyed(fn, "cloze_logits", ids, wts, prefix)


def similarity_class_logits(desc_ids_NxL, desc_mask_NxL, desc_weights_CxN, scale: float) -> Callable:
    ids, mask, wts = jnp.asarray(desc_ids_NxL), jnp.asarray(desc_mask_NxL), jnp.asarray(desc_weights_CxN)

    def fn(model, batch: dict, rngs=None) -> Array:
        return similarity_logits(model, batch["input_ids"], batch["attention_mask"],
                                 class_prototypes(model, ids, mask, wts), scale, rngs)

    return keyed(fn, "similarity_logits", ids, mask, wts, float(scale))


def head_class_logits(pooling: str) -> Callable:
    def fn(model, batch: dict, rngs=None) -> Array:
        h = model(batch["input_ids"], batch["attention_mask"], rngs=rngs)
        return model.classify(h, batch["attention_mask"], pooling=pooling, rngs=rngs)

    return keyed(fn, "head_logits", pooling)


def consistency_loss(task: Loss, class_logits: Callable, weight: float) -> Loss:
    """UDA's consistency training: L = L_task + weight · KL(p(clean) ‖ p(noised)) on unlabelled
    texts, the clean view's distribution a fixed target (no gradient, no dropout). The batch
    carries the task fields plus ``cons/`` (the clean view) and ``cons/noised/`` (the same texts,
    noised) padded batches."""

    def loss(model, batch, rngs=None):
        lt, aux = task(model, {k: v for k, v in batch.items() if not k.startswith("cons/")}, rngs)
        cons = {k[len("cons/"):]: v for k, v in batch.items() if k.startswith("cons/")}
        clean = {k: v for k, v in cons.items() if not k.startswith("noised/")}
        noised = {k[len("noised/"):]: v for k, v in cons.items() if k.startswith("noised/")}
        logp = jax.lax.stop_gradient(jax.nn.log_softmax(class_logits(model, clean, None).astype(jnp.float32), -1))
        logq = jax.nn.log_softmax(class_logits(model, noised, rngs).astype(jnp.float32), -1)
        kl = jnp.mean(jnp.sum(jnp.exp(logp) * (logp - logq), -1))
        return lt + weight * kl, {**aux, "consistency": kl}

    return keyed(loss, "consistency", task, class_logits, float(weight))


def make_cloze_loss(label_word_ids_CxW, label_word_weights_CxW, prefix_P=None) -> Loss:
    """Prompt-based (cloze) classification loss over the label words' logits at the mask; the
    label-word table is a constant of the compiled step. The encoder's last layer runs only at
    the mask position.

    batch: input_ids, attention_mask, mask_pos (B), labels (B). ``prefix_P``: a decoder's shared
    prompt prefix, left out of ``input_ids`` (see ``prompt_hidden``).
    """
    ids = jnp.asarray(label_word_ids_CxW)
    wts = jnp.asarray(label_word_weights_CxW)
    prefix = None if prefix_P is None else jnp.asarray(prefix_P, jnp.int32)
    tree = table_tree(label_word_ids_CxW)

    def loss(model, batch: dict, rngs=None) -> tuple[Array, dict]:
        if "segments" in batch:  # decoder examples packed into rows (data.batching.PackedExampleBatches)
            logits_BxC = packed_class_logits(model, batch, ids, wts, rngs, prefix)
        else:
            logits_BxC = prompt_class_logits(model, batch["input_ids"], batch["attention_mask"], batch["mask_pos"], ids,
                                             wts, rngs, prefix, tree)
        total, count = task_ce(logits_BxC, batch)
        return _mean(total, count), {"task_loss_sum": total, "count": count}

    return keyed(loss, "cloze", ids, wts, prefix)


def head_loss(pooling: str) -> Loss:
    """:func:`classification_loss` with ``pooling`` (comparable: one compiled step per pooling)."""
    return keyed(functools.partial(classification_loss, pooling=pooling), "head", pooling)


def sentence_embeddings(model, input_ids_BxL: Array, attention_mask_BxL: Array, rngs=None) -> Array:
    """Unit-length mean-pooled last hidden states (float32), as sentence-transformers encoders use."""
    h_BxLxD = model(input_ids_BxL, attention_mask_BxL, rngs=rngs)
    p_BxD = model.pool(h_BxLxD, attention_mask_BxL, "mean").astype(jnp.float32)
    return p_BxD / jnp.maximum(jnp.linalg.norm(p_BxD, axis=-1, keepdims=True), 1e-9)


def class_prototypes(model, desc_ids_NxL: Array, desc_mask_NxL: Array, desc_weights_CxN: Array) -> Array:
    """One unit vector per class: the weighted mean of its descriptions' sentence embeddings
    (deterministic: no dropout)."""
    e_NxD = sentence_embeddings(model, desc_ids_NxL, desc_mask_NxL)
    p_CxD = desc_weights_CxN @ e_NxD
    return p_CxD / jnp.maximum(jnp.linalg.norm(p_CxD, axis=-1, keepdims=True), 1e-9)


def similarity_logits(model, input_ids_BxL: Array, attention_mask_BxL: Array, prototypes_CxD: Array,
                      scale: float, rngs=None) -> Array:
    """Prompt scoring for sentence encoders: scale × cosine(input, class description)."""
    return scale * sentence_embeddings(model, input_ids_BxL, attention_mask_BxL, rngs) @ prototypes_CxD.T


def make_similarity_loss(desc_ids_NxL, desc_mask_NxL, desc_weights_CxN, scale: float) -> Loss:
    """Prompt-based fine-tuning of a sentence encoder: cross-entropy over the scaled cosine
    between each input and every class description ("It was great."), both encoded by the model
    being trained in the same step, so the gradient moves inputs and descriptions together. The
    description table is a constant of the compiled step.

    batch: input_ids, attention_mask, labels (B).
    """
    ids, mask, wts = jnp.asarray(desc_ids_NxL), jnp.asarray(desc_mask_NxL), jnp.asarray(desc_weights_CxN)

    def loss(model, batch: dict, rngs=None) -> tuple[Array, dict]:
        protos_CxD = class_prototypes(model, ids, mask, wts)
        logits_BxC = similarity_logits(model, batch["input_ids"], batch["attention_mask"], protos_CxD, scale, rngs)
        total, count = task_ce(logits_BxC, batch)
        return _mean(total, count), {"task_loss_sum": total, "count": count}

    return keyed(loss, "similarity", ids, mask, wts, float(scale))


def joint_loss(task: Loss, mlm: Loss, mlm_weight: float) -> Loss:
    """L = L_task + λ·L_mlm, on a batch that carries both the task and the MLM fields
    (the MLM part under keys prefixed ``mlm/``)."""

    def loss(model, batch, rngs=None):
        lt, aux_t = task(model, {k: v for k, v in batch.items() if not k.startswith("mlm/")}, rngs)
        mlm_batch = {k.split("/", 1)[1]: v for k, v in batch.items() if k.startswith("mlm/")}
        lm, aux_m = mlm(model, mlm_batch, rngs)
        return lt + mlm_weight * lm, {**aux_t, **aux_m, "task_loss": lt, "mlm_loss": lm}

    return keyed(loss, "joint", task, mlm, float(mlm_weight))
