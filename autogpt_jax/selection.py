"""Backbone selection (``select.configs``): screen each candidate config on this run's split —
its first learning rate, ``select.steps`` steps or its own, no test evaluation — and run the one
with the best dev accuracy (ties: the lower dev log-loss) into this run's output_dir.

``run_one(cfg, reuse=None) -> PipelineRun`` runs one pipeline; it is passed in (by
``pipeline.run_pipeline``) so that this module does not import the pipeline that imports it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from autogpt_jax.config import Config, load_config
from autogpt_jax.errors import ConfigError

log = logging.getLogger(__name__)


def _forwarded(cfg: Config) -> list[str]:
    """The settings of a selecting config that its candidates run under."""
    return ["--data.split_seed", str(cfg.data.split_seed), "--data.k_shot", str(cfg.data.k_shot),
            "--seed", str(cfg.seed), "--checkpoint.resume", str(cfg.checkpoint.resume).lower(),
            "--logging.progress", str(cfg.logging.progress).lower(),
            "--logging.tensorboard", str(cfg.logging.tensorboard).lower()]


def select_backbone(cfg: Config, run_one: Callable[..., Any]):
    """Screen the candidates, then run the best one with its own stages (unless this config sets
    some); the returned run's report carries ``backbone_selection``."""
    out, rows, screens = Path(cfg.output_dir), [], {}
    for path in cfg.select.config_list:
        cand = load_config(["--config_path", path])
        if cand.select.config_list:
            raise ConfigError(f"select.configs: candidate {path} selects among candidates itself; list plain configs")
        if cand.data.dataset != cfg.data.dataset:
            raise ConfigError(f"select.configs: candidate {path} uses dataset {cand.data.dataset!r}, this config "
                              f"{cfg.data.dataset!r}; candidates must share the task")
        t = time.perf_counter()
        screen = load_config(["--config_path", path, *_forwarded(cfg), "--output_dir", str(out / "select" / Path(path).stem),
                              "--stages", "finetune", "--eval.compare", "false",
                              "--finetune.learning_rates", repr(cand.finetune.lr_grid[0]),
                              "--finetune.steps", str(cfg.select.steps or cand.finetune.steps)])
        srun = run_one(screen)
        chosen = srun.exported.finetune
        # The winner's own run can start from this screen when the screen is exactly its first grid
        # point: same steps, no adaptation or joint loss before it, fixed template and label words.
        if (screen.finetune.steps == cand.finetune.steps and "adapt" not in cand.stage_list
                and cand.finetune.mlm_weight == 0 and cand.prompt.template and cand.prompt.label_words):
            screens[path] = {(cfg.data.split_seed, cand.finetune.lr_grid[0]): (srun.model, chosen)}
        rows.append({"config": path, "model": srun.report["model"], "parameters": srun.report["parameters"],
                     "dev_accuracy": chosen["best_dev_accuracy"], "dev_log_loss": chosen["best_dev_log_loss"],
                     "learning_rate": cand.finetune.lr_grid[0], "steps": cfg.select.steps or cand.finetune.steps,
                     "seconds": round(time.perf_counter() - t, 1)})
        del srun
        log.warning("select: %s (%s) dev accuracy %.3f", path, rows[-1]["model"], chosen["best_dev_accuracy"])
    # Dev accuracy moves in steps of 1/|dev|: ties go to the lower dev log-loss (then the earlier).
    best = max(rows, key=lambda r: (r["dev_accuracy"], -r["dev_log_loss"]))
    extra = ["--eval.seeds", cfg.eval.seeds] if cfg.eval.seeds else []  # the screen uses data.split_seed only
    if cfg.stages != Config.stages:  # stages set on the selecting config (or its command line) win
        extra += ["--stages", cfg.stages]
    run = run_one(load_config(["--config_path", best["config"], *_forwarded(cfg), *extra, "--output_dir", str(out)]),
                  reuse=screens.pop(best["config"], None))
    run.report["backbone_selection"] = {"chosen": best["config"], "model": best["model"], "candidates": rows}
    run.write_report()
    return run
