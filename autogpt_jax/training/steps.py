"""Pure train/eval steps over split NNX state, compiled once with explicit shardings.

``train_step(state, batch, rng) -> (state, metrics)``: the model's graph definition, the loss and
the optimiser are partialled out; the state is donated. Only the trainable parameters (a filter
over parameter types/paths) get gradients and optimiser moments; the rest ride along frozen.

What may change between runs without a new program lives in the state: the optimiser's
hyperparameters (learning rate, schedule lengths, AdamW's constants, the clipping norm) as traced
scalars. Trainers of the same :class:`StepSpec` on the same shardings share one compiled step
(:func:`compiled_steps`), so a learning-rate grid, a new seed or another step count compiles
nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from autogpt_jax.config import OptimConfig
from autogpt_jax.models.scan import STACK_ATTR
from autogpt_jax.training import sharding as shd

Array = jax.Array


class TrainState(struct.PyTreeNode):
    step: Array
    params: nnx.State  # trainable
    opt_state: Any
    frozen: nnx.State  # everything else the model holds (not saved in checkpoints when derivable)
    # The schedule's scalars, traced (``schedule_scalars``): one compiled step serves every peak
    # learning rate, warmup and step count. AdamW's constants and the clipping norm are traced too,
    # in ``opt_state`` (``optax.inject_hyperparams``).
    hparams: dict[str, Array] = struct.field(default_factory=dict)


def schedule_scalars(cfg: OptimConfig, total_steps: int) -> dict[str, np.ndarray]:
    """The schedule of ``cfg`` for a run of ``total_steps`` as traced scalars: its peak learning
    rate, warmup and decay lengths."""
    warm = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return {"learning_rate": np.float32(cfg.learning_rate), "warmup": np.float32(warm),
            "decay": np.float32(max(total_steps - warm, 1))}


def schedule_value(kind: str, step: Array, hp: dict[str, Array]) -> Array:
    """The learning rate at ``step``: linear warmup from 0 to the peak over ``warmup`` steps, then
    ``kind`` (linear to 0 | cosine to 0 | constant) over ``decay`` steps. The same values as optax's
    join_schedules(linear warmup, linear/cosine decay), computed from traced scalars."""
    t = jnp.asarray(step, jnp.float32)
    lr, warm, decay = hp["learning_rate"], hp["warmup"], hp["decay"]
    frac = jnp.clip(t - warm, 0.0, decay) / decay
    if kind == "constant":
        after = lr
    elif kind == "cosine":
        after = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    else:
        after = lr * (1.0 - frac)
    return jnp.where(t < warm, lr * t / jnp.maximum(warm, 1.0), after)


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """``cfg``'s schedule for ``total_steps`` as a plain function of the step."""
    hp = {k: jnp.asarray(v) for k, v in schedule_scalars(cfg, total_steps).items()}
    return lambda step: schedule_value(cfg.schedule, step, hp)


def _decay_mask(params):
    """No weight decay on biases and norm scales: vectors, or vectors per layer in a scanned stack."""
    def decays(path, p):
        return p.ndim - (1 if STACK_ATTR in _keys(path) else 0) >= 2

    return jax.tree_util.tree_map_with_path(decays, params)


def _adamw(learning_rate, b1, b2, eps, weight_decay, grad_clip):
    clip = jnp.where(grad_clip > 0, grad_clip, jnp.inf)
    return optax.chain(optax.clip_by_global_norm(clip),
                       optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_decay_mask))


def make_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Clipping + AdamW with every constant injected (``optax.inject_hyperparams``): the values
    live in the optimiser state, so the compiled update is the same for every setting. The
    learning rate there is the peak; the train step replaces it with the schedule's value."""
    tx = optax.inject_hyperparams(_adamw)(learning_rate=cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                          weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip)
    return tx, make_schedule(cfg, total_steps)


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


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything a compiled train step is specialised on. Equal specs (and equal state
    shardings) share one compiled step: a learning-rate grid, another seed or another step count
    changes only traced values. Losses and hooks compare by value (``objectives.keyed``)."""

    graphdef: Any
    loss_fn: Callable
    schedule: str  # linear | cosine | constant
    grad_accum: int = 1
    # FGM (Miyato et al. 2017): also descend on the loss at word embeddings moved by
    # ε · g / ‖g‖ along their own gradient; 0 disables.
    fgm_epsilon: float = 0.0
    # Called inside the step with the pre-update model, a model holding the gradients, and the
    # step; it may write the model's non-trained variables in place (AdaLoRA's rank masks).
    hook: Callable | None = None
    trainable: Any = nnx.Param


# (spec, mesh, state shardings) -> (train, eval) jitted steps, most recent last.
_STEPS: collections.OrderedDict = collections.OrderedDict()
_STEPS_KEPT = 16


def _loss(spec: StepSpec, params, frozen, batch, rng):
    model = nnx.merge(spec.graphdef, params, frozen)
    rngs = nnx.Rngs(dropout=rng) if rng is not None else None
    return spec.loss_fn(model, batch, rngs)


def _value_and_grad(spec: StepSpec, params, frozen, batch, rng):
    grad_fn = jax.value_and_grad(functools.partial(_loss, spec), has_aux=True)
    (loss, aux), grads = grad_fn(params, frozen, batch, rng)
    if spec.fgm_epsilon > 0:
        found = []

        def perturb(path, p, g):
            if not is_word_embedding(path):
                return p
            found.append(path)
            return p + (spec.fgm_epsilon * g / jnp.maximum(jnp.linalg.norm(g.astype(jnp.float32)), 1e-12)).astype(p.dtype)

        adv = jax.tree_util.tree_map_with_path(perturb, params, grads)
        if not found:
            raise ValueError("FGM needs a trainable word-embedding table (embeddings.word or wte)")
        (adv_loss, _), adv_grads = grad_fn(adv, frozen, batch, jax.random.fold_in(rng, 1))
        grads = jax.tree.map(jnp.add, grads, adv_grads)
        aux = {**aux, "adv_loss": adv_loss}
    return (loss, aux), grads


def _train_step(spec: StepSpec, tx: optax.GradientTransformation, state: TrainState, batch: dict, rng: Array):
    rng = jax.random.fold_in(rng, state.step)
    grad_fn = functools.partial(_value_and_grad, spec)
    if spec.grad_accum == 1:
        (loss, aux), grads = grad_fn(state.params, state.frozen, batch, rng)
    else:
        k = spec.grad_accum
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
    if spec.hook is not None:
        model = nnx.merge(spec.graphdef, state.params, state.frozen)
        spec.hook(model, nnx.merge(spec.graphdef, grads, state.frozen), state.step)
        _, _, frozen = nnx.split(model, spec.trainable, ...)
    lr = schedule_value(spec.schedule, state.step, state.hparams)
    opt_state = state.opt_state._replace(hyperparams={**state.opt_state.hyperparams, "learning_rate": lr})
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr, **aux}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, frozen=frozen), metrics


def _eval_step(spec: StepSpec, state: TrainState, batch: dict):
    loss, aux = _loss(spec, state.params, state.frozen, batch, None)
    return {"loss": loss, **aux}


def compiled_steps(spec: StepSpec, tx: optax.GradientTransformation, mesh: Mesh, state_shardings) -> tuple:
    """The jitted (train, eval) steps for ``spec`` on these state shardings, built once per
    process and shared by every trainer with the same spec: the state is donated, batches are
    split over the mesh's batch axes, the rng and metrics are replicated."""
    leaves, treedef = jax.tree.flatten(state_shardings)
    key = (spec, mesh, treedef, tuple(leaves))
    hit = _STEPS.get(key)
    if hit is not None:
        _STEPS.move_to_end(key)
        return hit
    batch_sh, repl = shd.batch_sharding(mesh), shd.replicated(mesh)
    train = jax.jit(functools.partial(_train_step, spec, tx), in_shardings=(state_shardings, batch_sh, repl),
                    out_shardings=(state_shardings, repl), donate_argnums=(0,))
    evaluate = jax.jit(functools.partial(_eval_step, spec), in_shardings=(state_shardings, batch_sh),
                       out_shardings=repl)
    _STEPS[key] = (train, evaluate)
    while len(_STEPS) > _STEPS_KEPT:
        _STEPS.popitem(last=False)
    return train, evaluate


@dataclasses.dataclass
class Trainer:
    """The compiled steps for one model, loss and optimiser on one mesh."""

    spec: StepSpec
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: Mesh
    state_shardings: Any = None
    _train: Callable | None = None
    _eval: Callable | None = None

    @property
    def graphdef(self):
        return self.spec.graphdef

    @property
    def hook(self):
        return self.spec.hook

    @property
    def trainable(self):
        return self.spec.trainable

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
        repl = shd.replicated(mesh)
        state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), repl), params=params, opt_state=opt_state,
                           frozen=frozen, hparams=jax.device_put(schedule_scalars(optim, total_steps), repl))
        spec = StepSpec(graphdef, loss_fn, optim.schedule, optim.grad_accum, fgm_epsilon, hook, trainable)
        trainer = cls(spec, tx, schedule, mesh)
        trainer.state_shardings = jax.tree.map(lambda x: x.sharding, state)
        return trainer, state

    def model(self, state: TrainState) -> nnx.Module:
        return nnx.merge(self.graphdef, state.params, state.frozen)

    # -- steps ------------------------------------------------------------------------------------
    def compile(self):
        """The jitted steps (shared with every trainer of the same spec; see :func:`compiled_steps`)."""
        self._train, self._eval = compiled_steps(self.spec, self.tx, self.mesh, self.state_shardings)
        return self

    def memory_analysis(self, state: TrainState, batch: dict, rng: Array):
        """XLA's memory analysis of the compiled train step for this batch shape (None where the
        backend gives none): argument, output, temporary and aliased bytes."""
        if self._train is None:
            self.compile()
        return self._train.lower(state, batch, rng).compile().memory_analysis()

    def train_step(self, state: TrainState, batch: dict, rng: Array):
        if self._train is None:
            self.compile()
        return self._train(state, batch, rng)

    def eval_step(self, state: TrainState, batch: dict):
        if self._eval is None:
            self.compile()
        return self._eval(state, batch)


def rng_key(seed: int) -> Array:
    return jax.random.key_data(jax.random.key(seed))


def as_key(data: Array) -> Array:
    return jax.random.wrap_key_data(data)
