"""One orbax CheckpointManager per stage: state + data-iterator position + RNG + config.

Saves are asynchronous; the newest K are kept plus the best by a chosen metric. Restoring walks
back from the newest step, skipping (with a warning) any checkpoint that cannot be read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
from flax import nnx
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from autogpt_jax.config import CheckpointConfig
from autogpt_jax.training.steps import TrainState

log = logging.getLogger(__name__)


def has_checkpoints(directory: Path) -> bool:
    """Whether ``directory`` holds saved steps (orbax names each step's folder by its number)."""
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def _key(path) -> str:
    return "/".join(str(k) for k in path)


def _saved_tree(state: TrainState) -> dict:
    # Frozen weights are rebuilt from the model source on restore, so they are not written; frozen
    # variables that training changes (AdaLoRA's rank masks and importance statistics) are.
    tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    mutable = {_key(p): v.get_value() for p, v in nnx.to_flat_state(state.frozen) if not isinstance(v, nnx.Param)}
    if mutable:
        tree["mutable"] = mutable
    return tree


def _with_mutable(frozen, values: dict):
    flat = [(p, v.replace(values[_key(p)]) if _key(p) in values else v) for p, v in nnx.to_flat_state(frozen)]
    return nnx.from_flat_state(flat)


class StageCheckpointer:
    def __init__(self, directory: str | Path, cfg: CheckpointConfig):
        self.directory = Path(directory).absolute()
        self.cfg = cfg
        metric, mode = cfg.best_metric, cfg.best_mode
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=cfg.keep),
            pp.BestN(get_metric_fn=lambda m: float(m[metric]), reverse=(mode == "min"), n=1,
                     keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(enable_async_checkpointing=cfg.async_save, preservation_policy=policy,
                                               create=True, cleanup_tmp_directories=True)
        self.mgr = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "extra"))

    def save(self, step: int, state: TrainState, extra: dict[str, Any], metrics: dict[str, float] | None = None):
        """Start an asynchronous save (arrays are copied off the device before this returns)."""
        metrics = {k: float(v) for k, v in (metrics or {}).items()} if metrics and self.cfg.best_metric in metrics else None
        self.mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_saved_tree(state)),
                                                    extra=ocp.args.JsonSave(extra)),
                      metrics=metrics, force=True)

    def all_steps(self) -> list[int]:
        return sorted(self.mgr.all_steps())

    def restore_latest(self, like: TrainState) -> tuple[TrainState, dict[str, Any], int] | None:
        """Restore the newest readable checkpoint into ``like``'s structure and shardings."""
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _saved_tree(like))
        for step in sorted(self.mgr.all_steps(), reverse=True):
            try:
                got = self.mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                     extra=ocp.args.JsonRestore()))
            except Exception as e:  # a torn or corrupted write: fall back to the one before
                log.warning("checkpoint %s/%d is unreadable (%s: %s); falling back to the previous one",
                            self.directory, step, type(e).__name__, str(e).splitlines()[0][:200])
                continue
            tree = got["state"]
            state = like.replace(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"],
                                 frozen=_with_mutable(like.frozen, tree["mutable"]) if "mutable" in tree else like.frozen)
            return state, dict(got["extra"]), step
        return None

    def wait(self):
        self.mgr.wait_until_finished()

    def close(self):
        self.mgr.wait_until_finished()
        self.mgr.close()
