"""The answer index: unit answer embeddings; top-k by dot product in JAX. With more than one device
the embeddings are sharded by rows over all of them: each device takes its shard's top k, the k·n
candidates are gathered and the top k of those is the answer (``AnswerIndex``). And the ranking
metrics: Recall@1/@5 and MRR, an answer being relevant when it belongs to the question's intent.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from autogpt_jax.errors import RetrievalError
from autogpt_jax.retrieval.answers import Answer
from autogpt_jax.training import sharding as shd

SHARD_AXIS = "shard"


@functools.partial(jax.jit, static_argnames=("k",))
def _top_k(emb_NxD, valid_N, q_BxD, k: int):
    s = jnp.where(valid_N[None, :], q_BxD @ emb_NxD.T, -jnp.inf)
    return jax.lax.top_k(s, k)


def _sharded_top_k(mesh: Mesh, k: int, rows_per_shard: int):
    k_local = min(k, rows_per_shard)

    def local(emb, valid, q):
        s = jnp.where(valid[None, :], q @ emb.T, -jnp.inf)
        v, i = jax.lax.top_k(s, k_local)
        i = i + jax.lax.axis_index(SHARD_AXIS) * rows_per_shard
        v_all = jax.lax.all_gather(v, SHARD_AXIS, axis=1, tiled=True)
        i_all = jax.lax.all_gather(i, SHARD_AXIS, axis=1, tiled=True)
        v2, j = jax.lax.top_k(v_all, k)
        return v2, jnp.take_along_axis(i_all, j, axis=1)

    f = jax.shard_map(local, mesh=mesh, in_specs=(P(SHARD_AXIS, None), P(SHARD_AXIS), P()), out_specs=(P(), P()),
                      check_vma=False)
    return jax.jit(f)


class AnswerIndex:
    """Unit answer embeddings and top-k search by dot product. ``shard``: split the rows over all
    devices (default: when there is more than one), for indexes larger than one device holds."""

    def __init__(self, embeddings_NxD: np.ndarray, answers: list[Answer], *, shard: bool | None = None,
                 devices: list | None = None):
        emb = np.asarray(embeddings_NxD, np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(answers):
            raise RetrievalError(f"{emb.shape[0] if emb.ndim == 2 else emb.shape} embeddings for {len(answers)} answers")
        if not answers:
            raise RetrievalError("the answer index is empty")
        self.answers = list(answers)
        self.n, self.dim = emb.shape
        devices = list(devices or jax.devices())
        self.sharded = len(devices) > 1 if shard is None else bool(shard)
        if self.sharded:
            n_dev = len(devices)
            rows = -(-self.n // n_dev)
            pad = rows * n_dev - self.n
            emb = np.concatenate([emb, np.zeros((pad, self.dim), np.float32)])
            valid = np.arange(rows * n_dev) < self.n
            self.mesh = shd.flat_mesh(SHARD_AXIS, devices)
            self._emb = jax.device_put(emb, NamedSharding(self.mesh, P(SHARD_AXIS, None)))
            self._valid = jax.device_put(valid, NamedSharding(self.mesh, P(SHARD_AXIS)))
            self._rows = rows
            self._fns: dict[int, Any] = {}
        else:
            self._emb, self._valid = jnp.asarray(emb), jnp.ones(self.n, bool)

    def search(self, q_BxD: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores B × k, answer ids B × k), best first."""
        k = min(int(k), self.n)
        q = jnp.asarray(np.asarray(q_BxD, np.float32))
        if self.sharded:
            if k not in self._fns:
                self._fns[k] = _sharded_top_k(self.mesh, k, self._rows)
            v, i = self._fns[k](self._emb, self._valid, jax.device_put(q, NamedSharding(self.mesh, P())))
        else:
            v, i = _top_k(self._emb, self._valid, q, k)
        return np.asarray(v), np.asarray(i)

    def scores(self, q_BxD: np.ndarray) -> np.ndarray:
        """Every answer's score (B × N): for evaluation."""
        return np.asarray(q_BxD, np.float32) @ np.asarray(self._emb)[: self.n].T


def rank_metrics(scores_QxN: np.ndarray, q_groups: list[str], a_groups: list[str], ks=(1, 5)) -> dict[str, float]:
    """Recall@k (a relevant answer in the top k) and MRR (1 / rank of the first relevant answer);
    relevant = same group. Ties count against the query (pessimistic)."""
    scores = np.asarray(scores_QxN, np.float64)
    a = np.asarray(a_groups)
    rel = np.asarray(q_groups)[:, None] == a[None, :]
    if not rel.any(1).all():
        missing = sorted({g for g, r in zip(q_groups, rel.any(1)) if not r})
        raise RetrievalError(f"no answer in the index for intent(s) {missing}")
    best_rel = np.where(rel, scores, -np.inf).max(1)
    rank = 1 + (np.where(~rel, scores, -np.inf) >= best_rel[:, None]).sum(1)
    out = {f"recall@{k}": float((rank <= k).mean()) for k in ks}
    out["mrr"] = float((1.0 / rank).mean())
    return out

