"""The stages, in the order they run. Each is ``run(ctx, state) -> state``: it reads what it
needs from the frozen per-seed ``SeedState`` and returns a new one.

``scope``: ``run`` stages run once (pretraining before the seeds; retrieval and export after
them, on the exported seed), ``seed`` stages once per split seed. ``enabled`` says when a stage
runs: the stages named in ``--stages``, plus the steps they need (``task``: the split and the
rule prompt; ``demonstrations``; ``baselines`` with ``eval.compare``; ``ensemble`` after
finetune with ``prompt.ensemble`` > 1 or ``prompt.calibrate``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from autogpt_jax.config import STAGES as STAGE_NAMES
from autogpt_jax.config import Config
from autogpt_jax.data.sources import check_out_of_scope
from autogpt_jax.errors import ConfigError
from autogpt_jax.prompts.templates import Template
from autogpt_jax.stages import (adapt, baselines, distill, embedding, ensemble, evaluate, export, finetune, pretrain,
                                prompt, retrieval, selftrain, task)
from autogpt_jax.stages.context import RunContext, SeedState
from autogpt_jax.training.checkpoint import has_checkpoints

TASK_STAGES = ("prompt", "adapt", "finetune", "selftrain", "evaluate", "distill")


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext, SeedState], SeedState]
    scope: str  # run | seed
    enabled: Callable[[Config], bool]


def _named(name: str) -> Callable[[Config], bool]:
    return lambda cfg: name in cfg.stage_list


def _finetune(ctx: RunContext, state: SeedState) -> SeedState:
    """Prompt or head fine-tuning, or the embedding path (finetune.mode probe, setfit, auto)."""
    if ctx.cfg.finetune.mode in ("probe", "setfit", "auto"):
        return embedding.run(ctx, state)
    return finetune.run(ctx, state)


def _task(cfg: Config) -> bool:
    return any(s in TASK_STAGES for s in cfg.stage_list)


STAGES: tuple[Stage, ...] = (
    Stage("pretrain", pretrain.run, "run", _named("pretrain")),
    Stage("task", task.run, "seed", _task),
    Stage("prompt", prompt.run, "seed", _named("prompt")),
    Stage("demonstrations", prompt.add_demonstrations, "seed", lambda c: _task(c) and c.prompt.demonstrations > 0),
    Stage("baselines", baselines.run, "seed", lambda c: _task(c) and c.eval.compare),
    Stage("adapt", adapt.run, "seed", _named("adapt")),
    Stage("finetune", _finetune, "seed", _named("finetune")),
    Stage("ensemble", ensemble.run, "seed",
          lambda c: "finetune" in c.stage_list and (c.prompt.ensemble > 1 or c.prompt.calibrate != "none")),
    Stage("selftrain", selftrain.run, "seed", _named("selftrain")),
    Stage("evaluate", evaluate.run, "seed", _named("evaluate")),
    Stage("distill", distill.run, "seed", _named("distill")),
    Stage("retrieval", retrieval.run, "run", _named("retrieval")),
    Stage("export", export.run, "run", _named("export")),
)


def plan(cfg: Config) -> tuple[list[Stage], list[Stage], list[Stage]]:
    """The enabled stages in three groups: run-level before the seeds, per seed, run-level after."""
    first_seed = next(i for i, s in enumerate(STAGES) if s.scope == "seed")
    enabled = [s for s in STAGES if s.enabled(cfg)]
    before = [s for s in enabled if s.scope == "run" and STAGES.index(s) < first_seed]
    after = [s for s in enabled if s.scope == "run" and STAGES.index(s) > first_seed]
    return before, [s for s in enabled if s.scope == "seed"], after


def preflight(cfg: Config):
    """The checks that need a layer above the config (it imports nothing above ``errors``): they
    fail here, before any model is built, with the same messages the config checks give."""
    built = {s.name for s in STAGES}
    not_built = [s for s in cfg.stage_list if s not in built]
    if not_built:
        raise ConfigError(f"stage(s) {not_built} are not built yet; available stages: {','.join(STAGE_NAMES)} "
                          "(for example --stages pretrain,export)")
    if cfg.prompt.template is not None:  # the task's own placeholders filled with stand-ins
        Template(cfg.prompt.template.replace("{labels}", "a or b").replace("{description}", "a task"))
    if cfg.handover.out_of_scope is not None:
        check_out_of_scope(cfg.handover.out_of_scope)
    ck_root = Path(cfg.output_dir) / "checkpoints"
    if not cfg.checkpoint.resume and ck_root.is_dir():
        used = sorted(d.name for d in ck_root.iterdir() if has_checkpoints(d))
        if used:
            raise ConfigError(f"{cfg.output_dir} already holds checkpoints of an earlier run ({', '.join(used)}); "
                              "pass --checkpoint.resume true to continue from them, or choose a new --output_dir")


# The table covers every stage the command line accepts.
assert set(STAGE_NAMES) <= {s.name for s in STAGES}, "a stage of config.STAGES is missing from the table"
