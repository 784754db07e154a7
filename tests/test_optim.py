"""Training-engine claims of the README: AdamW with warmup and linear/cosine decay, global-norm
clipping, bfloat16 compute over float32 master weights, and a NaN gradient (with a finite loss)
stopping the run."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from autogpt_jax.config import LoggingConfig, MeshConfig, OptimConfig
from autogpt_jax.data import batching
from autogpt_jax.data.sources import load_unlabeled
from autogpt_jax.models import hf
from autogpt_jax.models.bert import Bert, BertConfig
from autogpt_jax.training import objectives, steps
from autogpt_jax.training import sharding as shd
from autogpt_jax.errors import TrainingDivergedError
from autogpt_jax.training.loop import MetricsLogger, train_loop
from autogpt_jax.training.steps import Trainer

C = np.asarray([1.0, -2.0, 3.0, -4.0], np.float32)


class Toy(nnx.Module):
    """One trainable vector; with the loss ⟨w, C⟩ the gradient is C at every step."""

    def __init__(self):
        self.w = nnx.Param(jnp.full((4,), 0.5, jnp.float32))


def _linear_loss(model, batch, rngs=None):
    return jnp.sum(model.w[...] * C), {}


@pytest.fixture(scope="module")
def mesh1():
    return shd.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])


def _closed_form(kind: str, lr: float, warmup: int, total: int, s: int) -> float:
    """Linear warmup from 0 to lr over ``warmup`` steps, then decay to 0 at step ``total``."""
    if s < warmup:
        return lr * s / warmup
    frac = min(s - warmup, total - warmup) / (total - warmup)
    if kind == "linear":
        return lr * (1.0 - frac)
    if kind == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    return lr


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_schedule_is_warmup_then_decay_in_closed_form(kind):
    lr, warmup, total = 2e-3, 4, 20
    sched = steps.make_schedule(OptimConfig(learning_rate=lr, schedule=kind, warmup_steps=warmup), total)
    got = np.asarray([float(sched(s)) for s in range(total + 3)])
    want = np.asarray([_closed_form(kind, lr, warmup, total, s) for s in range(total + 3)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-10)
    # Landmarks, stated directly: 0 at the start, the peak after warmup, half-way values, 0 at the end.
    assert got[0] == 0.0 and got[warmup // 2] == pytest.approx(lr / 2) and got[warmup] == pytest.approx(lr)
    mid = warmup + (total - warmup) // 2
    assert got[mid] == pytest.approx(lr if kind == "constant" else lr / 2, rel=1e-5)
    assert got[total] == pytest.approx(lr if kind == "constant" else 0.0, abs=1e-10)
    # No warmup: the decay starts at lr on step 0; a warmup longer than the run still reaches the peak.
    nowarm = steps.make_schedule(OptimConfig(learning_rate=lr, schedule=kind), total)
    np.testing.assert_allclose([float(nowarm(s)) for s in range(total + 1)],
                               [_closed_form(kind, lr, 0, total, s) for s in range(total + 1)], rtol=1e-5, atol=1e-10)
    long = steps.make_schedule(OptimConfig(learning_rate=lr, schedule=kind, warmup_steps=50), 10)
    assert float(long(8)) == pytest.approx(lr * 8 / 9) and float(long(9)) == pytest.approx(lr)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_train_step_applies_and_reports_the_scheduled_lr(kind, mesh1):
    """With a constant gradient Adam's step is exactly lr·sign(g) (m̂ = g, v̂ = g²), so the parameter
    trajectory shows the learning rate actually applied at each step; the ``lr`` metric must be it.
    The vector gets no weight decay (only matrices do), so decay must not appear in the steps."""
    lr, warmup, total = 0.1, 3, 10
    opt = OptimConfig(learning_rate=lr, schedule=kind, warmup_steps=warmup, weight_decay=0.5, grad_clip=1.0)
    trainer, state = Trainer.create(Toy(), _linear_loss, opt, total, mesh1)
    batch = shd.put_batch({"x": np.zeros((1, 1), np.float32)}, mesh1)
    w = np.asarray(state.params["w"][...])
    for s in range(total):
        state, m = trainer.train_step(state, batch, jax.random.key(0))
        want_lr = _closed_form(kind, lr, warmup, total, s)
        assert float(m["lr"]) == pytest.approx(want_lr, rel=1e-5, abs=1e-9), s
        new = np.asarray(state.params["w"][...])
        # rtol: float32 rounding of Adam's bias corrections (1 - 0.999^t) is ~1e-5 relative.
        np.testing.assert_allclose(new - w, -want_lr * np.sign(C), rtol=1e-4, atol=1e-9, err_msg=f"step {s}")
        w = new
    assert float(m["grad_norm"]) == pytest.approx(float(np.linalg.norm(C)), rel=1e-6)  # reported before clipping


# --------------------------------------------------------------------------------------------
# global-norm clipping
# --------------------------------------------------------------------------------------------


def _adamw_by_hand(params, grads_seq, *, lr, b1, b2, eps, wd, clip):
    """Reference AdamW in numpy; gradients are clipped to global norm ``clip`` first (0: never);
    weight decay only on matrices."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    for t, g in enumerate(grads_seq, start=1):
        norm = math.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in g.values()))
        scale = clip / norm if clip and norm > clip else 1.0
        for k in p:
            gk = g[k].astype(np.float64) * scale
            m[k] = b1 * m[k] + (1 - b1) * gk
            v2[k] = b2 * v2[k] + (1 - b2) * gk ** 2
            mh, vh = m[k] / (1 - b1 ** t), v2[k] / (1 - b2 ** t)
            p[k] = p[k] - lr * (mh / (np.sqrt(vh) + eps) + (wd * p[k] if p[k].ndim >= 2 else 0.0))
    return p


def _run_tx(tx, params, grads_seq):
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    for g in grads_seq:
        u, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
        p = jax.tree.map(lambda a, b: a + b, p, u)
    return {k: np.asarray(v) for k, v in p.items()}


def test_global_norm_clipping_scales_the_gradient_before_adam():
    """A huge gradient (norm 300) then a small one (norm 0.3): Adam's first step is scale-free, but
    the second is not -- unclipped, the first gradient dominates both moments -- so the result after
    two steps tells a clipped update from an unclipped one."""
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}

    def grad_of_norm(n):
        g = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
        s = n / math.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in g.values()))
        return {k: (x * s).astype(np.float32) for k, x in g.items()}

    grads = [grad_of_norm(300.0), grad_of_norm(0.3)]
    hyper = dict(lr=0.1, b1=0.9, b2=0.999, eps=1e-8, wd=0.01)
    clipped = _adamw_by_hand(params, grads, clip=1.0, **hyper)
    raw = _adamw_by_hand(params, grads, clip=0.0, **hyper)
    # The two references differ by far more than the tolerance below, so the check has teeth.
    assert max(float(np.abs(clipped[k] - raw[k]).max()) for k in params) > 1e-2

    def optimizer(clip):
        cfg = OptimConfig(learning_rate=0.1, schedule="constant", weight_decay=0.01, grad_clip=clip)
        return steps.make_optimizer(cfg, 100)[0]

    ours = _run_tx(optimizer(1.0), params, grads)
    for k in params:
        np.testing.assert_allclose(ours[k], clipped[k], rtol=0, atol=1e-5, err_msg=k)
    ours0 = _run_tx(optimizer(0.0), params, grads)  # grad_clip 0 disables clipping
    for k in params:
        np.testing.assert_allclose(ours0[k], raw[k], rtol=0, atol=1e-5, err_msg=k)


# --------------------------------------------------------------------------------------------
# bfloat16 compute
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlm_batches(splade_dir):
    tok = hf.load_tokenizer(splade_dir)
    packed = batching.pack(batching.tokenize(tok, load_unlabeled("wiki_summaries", limit=120)), 32, style="bert",
                           bos_id=tok.cls_token_id, eos_id=tok.sep_token_id)
    it = batching.PretrainBatches(packed, 16, 0, objective="mlm", tokenizer=tok)
    return len(tok), [next(it) for _ in range(6)]


def _bert(vocab, dtype):
    # One layer: the claim does not depend on depth, and each dtype's train step is compiled (~5 s each).
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                     max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
    return Bert(cfg, rngs=nnx.Rngs(0), dtype=dtype)


def test_bfloat16_compute_trains_float32_master_weights(mlm_batches, mesh1):
    vocab, host_batches = mlm_batches
    losses, states = {}, {}
    for dt in (jnp.float32, jnp.bfloat16):
        model = _bert(vocab, dt)
        trainer, state = Trainer.create(model, objectives.mlm_loss, OptimConfig(learning_rate=3e-3), 100, mesh1)
        losses[dt] = []
        for b in host_batches:
            state, m = trainer.train_step(state, shd.put_batch(b, mesh1), jax.random.key(0))
            losses[dt].append(float(m["loss"]))
        states[dt] = (trainer, state)
    trainer, state = states[jnp.bfloat16]
    # The computation ran in bfloat16 ...
    b0 = {k: jnp.asarray(v) for k, v in host_batches[0].items()}
    out = jax.eval_shape(lambda st: trainer.model(st)(b0["input_ids"], b0["attention_mask"]), state)
    assert out.dtype == jnp.bfloat16
    # ... over float32 master weights and float32 Adam moments.
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    float_moments = {x.dtype for x in jax.tree.leaves(state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert float_moments == {jnp.dtype(jnp.float32)}
    l16, l32 = np.asarray(losses[jnp.bfloat16]), np.asarray(losses[jnp.float32])
    assert np.isfinite(l16).all() and l16[-1] < l16[0] - 0.1, l16  # it learns
    np.testing.assert_allclose(l16, l32, rtol=1e-2)  # close to the float32 run (measured: ≤1e-4) ...
    assert not np.array_equal(l16, l32)  # ... but not it: bfloat16 was really used
    p16 = jax.tree.leaves(state.params)
    p32 = jax.tree.leaves(states[jnp.float32][1].params)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(p16, p32))


# --------------------------------------------------------------------------------------------
# NaN gradient with a finite loss
# --------------------------------------------------------------------------------------------


def _nan_grad_loss(model, batch, rngs=None):
    """⟨w, C⟩ plus a term whose value is 0 but whose gradient is NaN when the batch is poisoned:
    jnp.where picks the constant, but its unpicked branch, sqrt of a negative, poisons the VJP."""
    w = model.w[...]
    poison = batch["poison"][0]
    hidden = 0.0 * jnp.sqrt((1.0 - 2.0 * poison) * (1.0 + w[0] ** 2))
    return jnp.sum(w * C) + jnp.where(poison > 0, 0.0, hidden), {}


def test_the_poisoned_loss_is_finite_with_a_nan_gradient():
    model = Toy()
    for poison, nan_grad in ((0.0, False), (1.0, True)):
        batch = {"poison": jnp.asarray([poison])}
        graphdef, params = nnx.split(model, nnx.Param)
        loss, g = jax.jit(jax.value_and_grad(lambda p: _nan_grad_loss(nnx.merge(graphdef, p), batch)[0]))(params)
        assert float(loss) == pytest.approx(float(np.sum(0.5 * C)))
        assert bool(np.isnan(np.asarray(g["w"][...])).any()) == nan_grad


def test_nan_gradient_with_finite_loss_stops_training_naming_the_step(mesh1, tmp_path):
    trainer, state = Trainer.create(Toy(), _nan_grad_loss, OptimConfig(learning_rate=0.01), 8, mesh1)

    def batches():
        for i in range(8):  # the 4th batch and later give NaN gradients
            yield {"attention_mask": np.ones((1, 4), np.int32), "poison": np.asarray([float(i >= 3)], np.float32)}

    logger = MetricsLogger(tmp_path, LoggingConfig(progress=False, tensorboard=False))
    with pytest.raises(TrainingDivergedError, match=r"^pretrain: grad_norm became nan at step 4; stopping\. "
                                                    r"no checkpoint was written before it"):
        train_loop(stage="pretrain", trainer=trainer, state=state, batches=batches(), total_steps=8,
                   rng=jax.random.key(0), logger=logger, log_every=1, progress=False)
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in recs)
