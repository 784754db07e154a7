"""The bi-encoder: the run's BERT encoder, mean-pooled and unit-normalised (as sentence-transformers
encoders are), the same weights for questions and answers. Fine-tuned contrastively on
question → answer pairs with in-batch negatives and a symmetric InfoNCE loss (question→answer and
answer→question cross-entropy over the batch's dot products divided by a temperature). Other
pairs of the same intent in a batch are not negatives: their answers are right too, so they are
masked out (``retrieval.mask_same_intent``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from autogpt_jax.data.batching import EpochIterator, pad_batch
from autogpt_jax.embedding_head import mean_embeddings
from autogpt_jax.errors import RetrievalError
from autogpt_jax.training import objectives

Array = jax.Array

def embed(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """Unit-length mean-pooled embeddings (N × D, float32), batched by length bucket."""
    return mean_embeddings(model, tokenizer, texts, max_length, batch_size, normalize=True)


def infonce_loss(model, batch: dict, rngs=None, *, temperature: float, mask_same_group: bool = True
                 ) -> tuple[Array, dict]:
    """Symmetric InfoNCE with in-batch negatives.

    batch: q_ids, q_mask (B × Lq), a_ids, a_mask (B × La), group (B; the intent id). Row i of
    ``S = q·aᵀ / temperature`` has its positive at column i; with ``mask_same_group`` the other
    answers of the same group leave the softmax (they are not wrong answers). The loss is the mean
    of the question→answer and answer→question cross-entropies.
    """
    q_BxD = objectives.sentence_embeddings(model, batch["q_ids"], batch["q_mask"], rngs)
    a_BxD = objectives.sentence_embeddings(model, batch["a_ids"], batch["a_mask"], rngs)
    s_BxB = (q_BxD @ a_BxD.T) / temperature
    B = s_BxB.shape[0]
    eye = jnp.eye(B, dtype=bool)
    if mask_same_group:
        same = batch["group"][:, None] == batch["group"][None, :]
        s_BxB = jnp.where(same & ~eye, -1e9, s_BxB)
    labels = jnp.arange(B)
    l_qa = -jnp.take_along_axis(jax.nn.log_softmax(s_BxB, -1), labels[:, None], -1).mean()
    l_aq = -jnp.take_along_axis(jax.nn.log_softmax(s_BxB.T, -1), labels[:, None], -1).mean()
    acc = (jnp.argmax(s_BxB, -1) == labels).mean()
    return 0.5 * (l_qa + l_aq), {"q_to_a_loss": l_qa, "a_to_q_loss": l_aq, "in_batch_accuracy": acc}


class PairBatches:
    """Shuffled, resumable batches of (question, answer, group) triples, each side padded to its
    own length bucket."""

    def __init__(self, q_seqs: list[np.ndarray], a_seqs: list[np.ndarray], groups: np.ndarray, batch_size: int,
                 seed: int, pad_id: int):
        if len(q_seqs) < batch_size:
            raise RetrievalError(f"retrieval.batch_size {batch_size} is larger than the {len(q_seqs)} training pairs")
        self.q, self.a, self.groups, self.pad = q_seqs, a_seqs, np.asarray(groups, np.int32), pad_id
        self.it = EpochIterator(len(q_seqs), batch_size, seed)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        idx, _ = self.it.next_indices()
        q_ids, q_mask = pad_batch([self.q[i] for i in idx], self.pad)
        a_ids, a_mask = pad_batch([self.a[i] for i in idx], self.pad)
        return {"q_ids": q_ids, "q_mask": q_mask, "a_ids": a_ids, "a_mask": a_mask, "group": self.groups[idx]}

    def state(self) -> dict[str, int]:
        return self.it.state()

    def restore(self, state: dict[str, Any]):
        self.it.restore(state)

