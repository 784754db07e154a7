"""Scanned layers (``model.scan_layers``): the layer stack as one layer over stacked parameters.

A model's ``layers`` is either a list of identical blocks (unrolled: XLA compiles every layer
again) or a :class:`LayerStack`, one block whose every variable has a leading ``layers`` axis,
run by ``jax.lax.scan`` (XLA compiles the block once, whatever the depth), as MaxText and levanter
do. Models build and load their blocks as a list; :func:`stack_layers` turns it into a stack and
:func:`unstack_layers` back. Checkpoint key maps, export, and PEFT methods that attach parameters
per layer see the list (``unstacked``); AdaLoRA's in-step updates and LoRA merging work on either.

Both forms give the same numbers: :func:`run_layers` gives layer ``i`` the same dropout key
either way (one draw split into one key per layer).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

STACK_ATTR = "stacked"  # the attribute (and path key) under which a LayerStack keeps its block
LAYERS_AXIS = "layers"  # the logical axis name of the leading, stacked dimension


class LayerStack(nnx.Module):
    """``num_layers`` blocks of one structure as a single block over stacked variables."""

    def __init__(self, stacked: nnx.Module, num_layers: int):
        self.stacked = stacked
        self.num_layers = num_layers

    def __len__(self) -> int:
        return self.num_layers

    def layer(self, i: int) -> nnx.Module:
        """Block ``i`` (a copy of its slice; writes to it do not reach the stack)."""
        graphdef, state = nnx.split(self.stacked)
        return nnx.merge(graphdef, jax.tree.map(lambda x: x[i], state))


# ``model.scan_layers`` null scans stacks at least this deep: a 30-layer decoder's train step
# compiles 5.6x faster scanned, a 6-layer encoder's no faster (scripts/bench_compile.py, 2026-12-02).
AUTO_MIN_LAYERS = 12


def wants_scan(model, setting: bool | None) -> bool:
    """``model.scan_layers``: true, false, or None (auto: from :data:`AUTO_MIN_LAYERS` layers)."""
    return len(model.layers) >= AUTO_MIN_LAYERS if setting is None else bool(setting)


def is_stacked(model) -> bool:
    return isinstance(getattr(model, "layers", None), LayerStack)


def _relabel(state, axes: Callable[[tuple], tuple], sharding) -> None:
    """Give every variable of ``state`` the logical axes ``axes(its axes)`` (None when empty) and,
    with ``sharding``, the placement those axes ask for; in place."""
    for _, var in nnx.to_flat_state(state):
        var.set_metadata(out_sharding=axes(tuple(var.get_metadata().get("out_sharding") or ())) or None)
        if sharding is not None:
            var.set_value(jax.device_put(var.get_value(), sharding(var)))


def stack_layers(model, sharding: Callable[[nnx.Variable], Any] | None = None) -> None:
    """Replace ``model.layers`` (a list) by a :class:`LayerStack`, in place. ``sharding(var)``
    places each stacked variable (its logical axes now start with ``layers``)."""
    if is_stacked(model):
        return
    blocks = list(model.layers)
    graphdefs, states = zip(*(nnx.split(b) for b in blocks))
    if any(g != graphdefs[0] for g in graphdefs[1:]):
        raise ValueError("model.scan_layers needs layers of one structure; these layers differ")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    _relabel(stacked, lambda axes: (LAYERS_AXIS, *axes) if axes else (), sharding)
    model.layers = LayerStack(nnx.merge(graphdefs[0], stacked), len(blocks))


def unstack_layers(model, sharding: Callable[[nnx.Variable], Any] | None = None) -> None:
    """Replace a :class:`LayerStack` by the list of its blocks, in place."""
    if not is_stacked(model):
        return
    stack = model.layers
    graphdef, state = nnx.split(stack.stacked)
    blocks = []
    for i in range(stack.num_layers):
        st = jax.tree.map(lambda x: x[i], state)
        _relabel(st, lambda axes: axes[1:] if axes[:1] == (LAYERS_AXIS,) else axes, sharding)
        blocks.append(nnx.merge(graphdef, st))
    model.layers = nnx.List(blocks)


@contextlib.contextmanager
def unstacked(model):
    """The model with its layers as a list for the duration (stacked again afterwards, with any
    variables added per layer stacked too)."""
    was = is_stacked(model)
    unstack_layers(model)
    try:
        yield model
    finally:
        if was:
            stack_layers(model)


def layer_keys(rngs: nnx.Rngs | None, n: int) -> Array | None:
    """One dropout key per layer from a single draw (None: deterministic)."""
    return None if rngs is None else jax.random.split(rngs.dropout(), n)


def rngs_at(keys: Array | None, i) -> nnx.Rngs | None:
    return None if keys is None else nnx.Rngs(dropout=keys[i])


def layer_at(layers, i: int) -> nnx.Module:
    return layers.layer(i) if isinstance(layers, LayerStack) else layers[i]


def run_layers(layers, fn: Callable, x, xs=None, *, keys: Array | None = None, stop: int | None = None):
    """Layers ``0 .. stop-1`` in order: ``x, y_i = fn(layer_i, x, xs_i, rngs_i)``.

    On a :class:`LayerStack` one ``lax.scan`` (``xs``: a pytree with a leading layers axis; the
    ys come back stacked the same way); on a list a Python loop (``xs``: a sequence; the ys a
    tuple). ``keys``: from :func:`layer_keys`."""
    n = len(layers) if stop is None else stop
    if not isinstance(layers, LayerStack):
        ys = []
        for i in range(n):
            x, y = fn(layers[i], x, None if xs is None else xs[i], rngs_at(keys, i))
            ys.append(y)
        return x, tuple(ys)
    graphdef, state = nnx.split(layers.stacked)
    cut = (lambda t: jax.tree.map(lambda a: a[:n], t)) if n < len(layers) else (lambda t: t)

    def body(x, inp):
        st, xs_i, key = inp
        return fn(nnx.merge(graphdef, st), x, xs_i, None if key is None else nnx.Rngs(dropout=key))

    return jax.lax.scan(body, x, (cut(state), None if xs is None else cut(xs), None if keys is None else keys[:n]))
