"""Pure train/eval steps over split NNX state, compiled once with explicit shardings.

``train_step(state, batch, rng) -> (state, metrics)``: the model's graph definition, the loss and
the optimiser are partialled out; the state is donated. Only the trainable parameters (a filter
over parameter types/paths) get gradients and optimiser moments; the rest ride along frozen.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from autogpt_jax.config import OptimConfig
from autogpt_jax.training import sharding as shd

Array = jax.Array


class TrainState(struct.PyTreeNode):
    step: Array
    params: nnx.State  # trainable
    opt_state: Any
    frozen: nnx.State  # everything else the model holds (not saved in checkpoints when derivable)


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    warm = min(cfg.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warm, 1)
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.learning_rate)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps)
    else:
        after = optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps)
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warm), after], [warm])


def make_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(cfg, total_steps)
    # No weight decay on biases and LayerNorm scales (vectors).
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts), schedule


def _keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def is_word_embedding(path) -> bool:
    """The token-embedding table (BERT ``embeddings.word``, GPT-2 ``wte``, Llama ``embed_tokens``), which FGM perturbs."""
    keys = [k for k in _keys(path) if k != "value"]
    return len(keys) >= 2 and keys[-1] == "embedding" and keys[-2] in ("word", "wte", "embed_tokens")


def opt_state_shardings(tx: optax.GradientTransformation, params, mesh: Mesh):
    """Optimiser moments get their parameter's sharding (matched by tree path); scalars are replicated.
    Explicit, because zeros have no data dependency from which XLA could infer it."""
    by_path = {_keys(p): (x.shape, x.sharding) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    repl = shd.replicated(mesh)

    def pick(path, leaf):
        keys = _keys(path)
        for i in range(len(keys)):
            hit = by_path.get(keys[i:])
            if hit is not None and hit[0] == leaf.shape:
                return hit[1]
        return repl

    return jax.tree_util.tree_map_with_path(pick, jax.eval_shape(tx.init, params))


@dataclasses.dataclass
class Trainer:
    """Holds the compiled steps for one model, loss and optimiser on one mesh."""

    graphdef: Any
    loss_fn: Callable
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: Mesh
    grad_accum: int = 1
    # FGM (Miyato et al. 2017): also descend on the loss at word embeddings moved by
    # ε · g / ‖g‖ along their own gradient; 0 disables.
    fgm_epsilon: float = 0.0
    # Called inside the step with the pre-update model, a model holding the gradients, and the
    # step; it may write the model's non-trained variables in place (AdaLoRA's rank masks).
    hook: Callable | None = None
    trainable: Any = nnx.Param
    state_shardings: Any = None
    _train: Callable | None = None
    _eval: Callable | None = None

    # -- state ------------------------------------------------------------------------------------
    @classmethod
    def create(cls, model: nnx.Module, loss_fn: Callable, optim: OptimConfig, total_steps: int, mesh: Mesh,
               trainable: Any = nnx.Param, fgm_epsilon: float = 0.0, hook: Callable | None = None,
               frozen_dtype=None) -> tuple["Trainer", TrainState]:
        """Split ``model`` into trainable/frozen state, shard it on ``mesh`` and init the optimiser
        inside jit, so every array is born on its shards."""
        graphdef, params, frozen = nnx.split(model, trainable, ...)
        # Copies: the step donates its state (frozen part included), and the caller's model -- or
        # the model a PEFT copy shares its frozen arrays with -- must stay usable.
        params = jax.tree.map(lambda x: x.copy(), params)
        frozen = jax.tree.map(lambda x: x.copy(), frozen)
        if frozen_dtype is not None:  # PEFT: the frozen weights (parameters only) held in a smaller dtype
            frozen = jax.tree.map(
                lambda v: v.replace(v.get_value().astype(frozen_dtype)) if isinstance(v, nnx.Param) else v,
                frozen, is_leaf=lambda v: isinstance(v, nnx.Variable))
        tx, schedule = make_optimizer(optim, total_steps)
        p_sh = shd.state_shardings(params, mesh)
        f_sh = shd.state_shardings(frozen, mesh)
        params = jax.device_put(params, p_sh)
        frozen = jax.device_put(frozen, f_sh)
        opt_state = jax.jit(tx.init, out_shardings=opt_state_shardings(tx, params, mesh))(params)
        state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shd.replicated(mesh)),
                           params=params, opt_state=opt_state, frozen=frozen)
        trainer = cls(graphdef, loss_fn, tx, schedule, mesh, optim.grad_accum, fgm_epsilon, hook, trainable)
        trainer.state_shardings = jax.tree.map(lambda x: x.sharding, state)
        return trainer, state

    def model(self, state: TrainState) -> nnx.Module:
        return nnx.merge(self.graphdef, state.params, state.frozen)

    # -- steps ------------------------------------------------------------------------------------
    def _loss(self, params, frozen, batch, rng):
        model = nnx.merge(self.graphdef, params, frozen)
        rngs = nnx.Rngs(dropout=rng) if rng is not None else None
        return self.loss_fn(model, batch, rngs)

    def _value_and_grad(self, params, frozen, batch, rng):
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)
        (loss, aux), grads = grad_fn(params, frozen, batch, rng)
        if self.fgm_epsilon > 0:
            found = []

            def perturb(path, p, g):
                if not is_word_embedding(path):
                    return p
                found.append(path)
                return p + (self.fgm_epsilon * g / jnp.maximum(jnp.linalg.norm(g.astype(jnp.float32)), 1e-12)).astype(p.dtype)

            adv = jax.tree_util.tree_map_with_path(perturb, params, grads)
            if not found:
                raise ValueError("FGM needs a trainable word-embedding table (embeddings.word or wte)")
            (adv_loss, _), adv_grads = grad_fn(adv, frozen, batch, jax.random.fold_in(rng, 1))
            grads = jax.tree.map(jnp.add, grads, adv_grads)
            aux = {**aux, "adv_loss": adv_loss}
        return (loss, aux), grads

    def _train_step(self, state: TrainState, batch: dict, rng: Array):
        rng = jax.random.fold_in(rng, state.step)
        grad_fn = self._value_and_grad
        if self.grad_accum == 1:
            (loss, aux), grads = grad_fn(state.params, state.frozen, batch, rng)
        else:
            k = self.grad_accum
            micro = jax.tree.map(lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), batch)

            def body(carry, xs):
                g_acc, l_acc, aux_acc = carry
                mb, i = xs
                (l, a), g = grad_fn(state.params, state.frozen, mb, jax.random.fold_in(rng, i))
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, jax.tree.map(jnp.add, aux_acc, a)), None

            zeros_g = jax.tree.map(jnp.zeros_like, state.params)
            (_, aux_shape), _ = jax.eval_shape(lambda: grad_fn(state.params, state.frozen,
                                                               jax.tree.map(lambda x: x[0], micro), rng))
            zeros_aux = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)
            (grads, loss, aux), _ = jax.lax.scan(body, (zeros_g, jnp.zeros((), jnp.float32), zeros_aux),
                                                 (micro, jnp.arange(k)))
            grads = jax.tree.map(lambda g: g / k, grads)
            loss = loss / k
        frozen = state.frozen
        if self.hook is not None:
            model = nnx.merge(self.graphdef, state.params, state.frozen)
            self.hook(model, nnx.merge(self.graphdef, grads, state.frozen), state.step)
            _, _, frozen = nnx.split(model, self.trainable, ...)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": self.schedule(state.step), **aux}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, frozen=frozen), metrics

    def _eval_step(self, state: TrainState, batch: dict):
        loss, aux = self._loss(state.params, state.frozen, batch, None)
        return {"loss": loss, **aux}

    def compile(self, example_batch: dict):
        """jit with explicit in/out shardings; the state is donated."""
        batch_sh = jax.tree.map(lambda _: shd.batch_sharding(self.mesh), example_batch)
        repl = shd.replicated(self.mesh)
        self._train = jax.jit(self._train_step, in_shardings=(self.state_shardings, batch_sh, repl),
                              out_shardings=(self.state_shardings, repl), donate_argnums=(0,))
        self._eval = jax.jit(self._eval_step, in_shardings=(self.state_shardings, batch_sh), out_shardings=repl)
        return self

    def memory_analysis(self, state: TrainState, batch: dict, rng: Array):
        """XLA's memory analysis of the compiled train step for this batch shape (None where the
        backend gives none): argument, output, temporary and aliased bytes."""
        if self._train is None:
            self.compile(batch)
        return self._train.lower(state, batch, rng).compile().memory_analysis()

    def train_step(self, state: TrainState, batch: dict, rng: Array):
        if self._train is None:
            self.compile(batch)
        return self._train(state, batch, rng)

    def eval_step(self, state: TrainState, batch: dict):
        if self._eval is None:
            self.compile(batch)
        return self._eval(state, batch)


def rng_key(seed: int) -> Array:
    return jax.random.key_data(jax.random.key(seed))


def as_key(data: Array) -> Array:
    return jax.random.wrap_key_data(data)
