"""``run_pipeline``: build the mesh and the backbone, run the stage table (run-level stages once,
the per-seed stages once per split seed), summarise over the seeds, write ``report.json``."""

from __future__ import annotations

import dataclasses
import time
import types
from pathlib import Path
from typing import Any

import jax

from autogpt_jax import selection
from autogpt_jax.config import HEAD_MODES, Config, to_dict
from autogpt_jax.data.task import num_labels
from autogpt_jax.errors import ConfigError
from autogpt_jax.evaluation import mean_std
from autogpt_jax.models.build import build_model, param_count
from autogpt_jax.stages import plan, preflight
from autogpt_jax.stages.context import RunContext, SeedState, write_json
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.compilation import compile_seconds
from autogpt_jax.training.loop import MetricsLogger


@dataclasses.dataclass(frozen=True)
class PipelineRun:
    """A finished run: its report, every seed's final state, and the exported seed's."""

    report: dict[str, Any]
    seeds: tuple[SeedState, ...]
    exported: SeedState
    out: Path

    def write_report(self):
        write_json(self.out / "report.json", self.report)

    # the exported seed's task model, student, hand-over and retriever
    classifier = property(lambda self: self.exported.classifier)
    student = property(lambda self: self.exported.student)
    model = property(lambda self: self.exported.model)
    handover = property(lambda self: self.exported.handover)
    retriever = property(lambda self: self.exported.retriever)


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over the split seeds of what every seed measured."""
    summary: dict[str, Any] = {}
    if all("test" in r for r in per_seed):
        summary["test_accuracy"] = mean_std([r["test"]["accuracy"] for r in per_seed])
        summary["test_macro_f1"] = mean_std([r["test"]["macro_f1"] for r in per_seed])
    for name in (per_seed[0].get("baselines") or {}):
        summary[f"{name}_accuracy"] = mean_std([r["baselines"][name]["accuracy"] for r in per_seed])
    if all("handover" in r for r in per_seed):
        for key in ("in_scope_accuracy", "out_of_scope_recall"):
            if all(key in r["handover"]["test"] for r in per_seed):
                summary[f"handover_{key}"] = mean_std([r["handover"]["test"][key] for r in per_seed])
    if all("distill" in r for r in per_seed):
        summary["student_test_accuracy"] = mean_std([r["distill"]["student_test"]["accuracy"] for r in per_seed])
        summary["student_speedup"] = mean_std([r["distill"]["speedup"] for r in per_seed])
    return summary


def levers(cfg: Config) -> dict[str, Any]:
    """The method's levers this run uses (report.json ``levers``): each one that is on, with its setting."""
    pc, stages = cfg.prompt, cfg.stage_list
    on: dict[str, Any] = {}
    if "prompt" in stages:
        on["prompt search"] = {"templates": "config" if pc.template else f"rule candidates ({pc.candidates})",
                               "label_words": "config" if pc.label_words else "search",
                               "paraphrases": pc.paraphrases, "written": pc.written}
    if pc.demonstrations:
        on["demonstrations"] = pc.demonstrations
    if "adapt" in stages:
        on["adaptation"] = {"steps": cfg.adapt.steps, "texts": cfg.adapt.max_unlabeled}
    if cfg.peft.method != "none":
        on["peft"] = cfg.peft.method
    if cfg.finetune.mlm_weight:
        on["joint loss"] = cfg.finetune.mlm_weight
    if cfg.finetune.fgm_epsilon:
        on["fgm"] = cfg.finetune.fgm_epsilon
    if pc.calibrate != "none":
        on["calibration"] = pc.calibrate
    if pc.ensemble > 1:
        on["ensemble"] = {"members": pc.ensemble, "weighting": pc.ensemble_weighting}
    if "selftrain" in stages:
        on["self-training"] = {"generations": cfg.selftrain.generations, "per_class": cfg.selftrain.per_class,
                               "threshold": cfg.selftrain.threshold, "ipet": cfg.selftrain.ipet,
                               "keep": cfg.selftrain.keep}
    if "distill" in stages:
        on["distillation"] = {"student": cfg.distill.student, "teacher": cfg.distill.teacher}
    return on


def _dev_accuracy(s: SeedState) -> float:
    if "dev" in s.results:
        return s.results["dev"]["accuracy"]
    return s.finetune["best_dev_accuracy"] if s.finetune else float("-inf")


def exported_seed(states: list[SeedState], split_seed: int) -> SeedState:
    """The seed whose model is exported: ``data.split_seed`` when it ran, else the best on dev
    (the earlier seed on ties)."""
    for s in states:
        if s.seed == split_seed:
            return s
    return max(states, key=lambda s: (_dev_accuracy(s), -states.index(s)))


def make_context(cfg: Config, reuse: dict | None = None) -> RunContext:
    """The run's mesh (joining the other processes first, when there are some), output directory,
    metrics logger and backbone. Scripts that drive single stages start from here too."""
    shd.init_distributed(cfg.mesh)
    mesh = shd.make_mesh(cfg.mesh)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    logger = MetricsLogger(out, cfg.logging, to_dict(cfg))
    n_labels = 0
    if cfg.finetune.mode in HEAD_MODES or (cfg.eval.compare and "finetune" in cfg.stage_list):
        n_labels = num_labels(cfg.data)
    backbone = build_model(cfg.model, seed=cfg.seed, num_labels=n_labels,
                           sharding=lambda var: shd.variable_sharding(var, mesh))
    return RunContext(cfg, mesh, out, logger, backbone, types.MappingProxyType(dict(reuse or {})))


def run_pipeline(cfg: Config, *, return_run: bool = False, reuse: dict | None = None):
    """Run ``cfg``'s stages; the report (or, with ``return_run``, the ``PipelineRun``)."""
    if cfg.model.name_or_path == "auto" and not (cfg.data.train_file or cfg.data.dataset):
        raise ConfigError("model.name_or_path auto screens the packaged recipes on your labelled data: pass "
                          "--data.train_file FILE, or name a model (--model.name_or_path minilm-l6)")
    if cfg.select.config_list or cfg.model.name_or_path == "auto":
        run = selection.select_backbone(cfg, lambda c, reuse=None: run_pipeline(c, return_run=True, reuse=reuse))
        return run if return_run else run.report
    preflight(cfg)
    t0 = time.perf_counter()
    timings: dict[str, dict[str, float]] = {}

    def timed(name: str, fn):
        """Run ``fn()``, adding its wall and compile seconds to ``timings[name]`` (summed over seeds)."""
        w, c = time.perf_counter(), compile_seconds()
        out_ = fn()
        e = timings.setdefault(name, {"wall_s": 0.0, "compile_s": 0.0})
        e["wall_s"] = round(e["wall_s"] + time.perf_counter() - w, 2)
        e["compile_s"] = round(e["compile_s"] + compile_seconds() - c, 2)
        e["run_s"] = round(e["wall_s"] - e["compile_s"], 2)
        return out_

    ctx = timed("build", lambda: make_context(cfg, reuse))
    out, mesh, backbone, logger = ctx.out, ctx.mesh, ctx.backbone, ctx.logger
    report: dict[str, Any] = {
        "model": backbone.source, "parameters": param_count(backbone.model), "stages": list(cfg.stage_list),
        "devices": {"count": jax.device_count(), "processes": jax.process_count(),
                    "platform": jax.devices()[0].platform, "mesh": dict(mesh.shape)},
        "config": to_dict(cfg),
        "levers": levers(cfg),
        # Per stage: wall seconds, of which compiling (tracing, lowering, XLA or the cache) and the rest.
        "timings": timings,
    }

    def done(state: SeedState):
        report.update(state.run_results)
        report["wall_time_s"] = round(time.perf_counter() - t0, 2)
        write_json(out / "report.json", report)

    before, per_seed, after = plan(cfg)
    state = SeedState(seed=cfg.data.split_seed, model=backbone.model)
    states: list[SeedState] = []
    try:
        for stage in before:
            state = timed(stage.name, lambda: stage.run(ctx, state))
            done(state)
        if per_seed:
            base = state.replace(run_results=types.MappingProxyType({}))
            for seed in cfg.eval.seed_list or (cfg.data.split_seed,):
                s = base.replace(seed=seed)
                for stage in per_seed:
                    s = timed(stage.name, lambda: stage.run(ctx, s))
                states.append(s)
                report["seeds"] = [dict(x.results) for x in states]
                write_json(out / "report.json", report)
            report["summary"] = summarise(report["seeds"])
            state = exported_seed(states, cfg.data.split_seed)
            report["exported_seed"] = state.seed
        for stage in after:
            state = timed(stage.name, lambda: stage.run(ctx, state))
            done(state)
        done(state)
    finally:
        logger.close()
    run = PipelineRun(report, tuple(states), state, out)
    return run if return_run else report
