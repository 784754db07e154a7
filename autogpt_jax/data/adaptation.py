"""Batches for adaptive training on the task's own text: the unlabelled task text plus the
training sentences prompted with their label word; and the joint (task + MLM) batches of
fine-tuning with ``finetune.mlm_weight``. Here, in the data layer, because both the adapt stage
and fine-tuning build them."""

from __future__ import annotations

import numpy as np

from autogpt_jax.config import AdaptConfig
from autogpt_jax.data import batching


def adapt_batches(tok, unlabeled: list[str], train_texts: list[str], train_labels: np.ndarray, template,
                  ids_CxW: np.ndarray, ac: AdaptConfig, batch_size: int, seed: int, *, decoder: bool
                  ) -> batching.PretrainBatches:
    """Unlabelled task text plus the training sentences prompted with their label word; tokens of
    the label words are favoured by prompt-aware masking (encoders). Decoders get the same text
    for causal-LM training, each prompt followed by its label word. ``ids_CxW``: the label words'
    token table (C × W for encoders, C × W × T for decoders, as ``inference.word_table`` gives)."""
    L = ac.seq_len
    seqs = batching.encode(tok, unlabeled, L)
    word_ids = np.unique(ids_CxW[ids_CxW > 0])
    train_labels = np.asarray(train_labels)
    p_seqs, mpos = template.encode(tok, list(train_texts), L - ids_CxW.shape[-1] if decoder else L, causal=decoder)
    if decoder:  # ids C×W×T: the prompt continues with every token of the class's first word
        p_seqs = [np.append(s_, ids_CxW[y, 0][ids_CxW[y, 0] >= 0]).astype(np.int32) for s_, y in zip(p_seqs, train_labels)]
    else:
        for s_, m_, y in zip(p_seqs, mpos, train_labels):
            s_[m_] = ids_CxW[y, 0]  # the true label word in the mask slot
    # The K-shot sentences are few: repeat them so they make up about a fifth of the adaptation data.
    reps = max(1, len(seqs) // (4 * max(len(p_seqs), 1)))
    all_seqs = seqs + p_seqs * reps
    ids, mask = batching.pad_batch(all_seqs, tok.pad_token_id or 0, buckets=(L,))
    if decoder:
        return batching.PretrainBatches(batching.Packed(ids, mask, mask == 1, None), batch_size, seed, objective="clm")
    special = np.isin(ids, np.asarray(tok.all_special_ids))
    maskable = (mask == 1) & ~special
    boost = np.isin(ids, word_ids) & maskable if ac.masking == "prompt_aware" else None
    packed = batching.Packed(ids, mask, maskable, boost)
    mode = "whole_word" if ac.masking in ("prompt_aware", "whole_word") else "random"
    return batching.PretrainBatches(packed, batch_size, seed, objective="mlm", tokenizer=tok, mask_rate=ac.mask_rate,
                                    masking_mode=mode, boost_rate=ac.label_word_rate)


class JointBatches:
    """Task batches with a second batch alongside, its keys prefixed ``<prefix>/``: an MLM batch on
    unlabelled task text (``mlm``), or the views of consistency training (``cons``)."""

    def __init__(self, task_batches, mlm_batches, prefix: str = "mlm"):
        self.task, self.mlm, self.prefix = task_batches, mlm_batches, prefix

    def __iter__(self):
        return self

    def __next__(self):
        return {**next(self.task), **{f"{self.prefix}/{k}": v for k, v in next(self.mlm).items()}}

    def state(self):
        return {"task": self.task.state(), "mlm": self.mlm.state()}

    def restore(self, st):
        self.task.restore(st["task"])
        self.mlm.restore(st["mlm"])
