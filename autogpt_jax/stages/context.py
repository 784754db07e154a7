"""What the stages share: ``RunContext`` (the whole run's, never changed by a stage) and
``SeedState`` (one split seed's, frozen: a stage returns a new one)."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax import nnx

from autogpt_jax.calibration import calibrate
from autogpt_jax.config import Config, to_dict
from autogpt_jax.data.task import Task
from autogpt_jax.handover import Handover
from autogpt_jax.inference import Classifier, make_classifier
from autogpt_jax.models.build import Backbone
from autogpt_jax.prompts.templates import Template, Verbalizer
from autogpt_jax.pseudolabels import pool_subset
from autogpt_jax.training.fit import Checkpointing
from autogpt_jax.training.loop import MetricsLogger, is_main


def _empty() -> Mapping:
    return types.MappingProxyType({})


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def write_json(path: Path, obj: Any):
    if is_main():
        path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def config_values(cfg: Config, keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of dotted config keys (a section name gives the whole section)."""
    d, out = to_dict(cfg), {}
    for key in keys:
        v: Any = d
        for part in key.split("."):
            v = v[part]
        out[key] = v
    return out


@dataclasses.dataclass(frozen=True)
class RunContext:
    cfg: Config
    mesh: Any
    out: Path
    logger: MetricsLogger
    backbone: Backbone  # the base model as built, before any stage trained it
    # (split seed, learning rate) -> (model, summary) of a fine-tuning already done on the same
    # split from the same base model with the same recipe (backbone selection's screen)
    reuse: Mapping[tuple[int, float], tuple[Any, dict]] = dataclasses.field(default_factory=_empty)

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    @property
    def kind(self) -> str:
        return self.backbone.kind

    def bar(self, label: str) -> str | None:
        """``label`` for a progress bar when the run shows them (logging.progress), else None."""
        return label if self.cfg.logging.progress else None

    def calibrate(self, clf: Classifier, task: Task, label: str) -> dict:
        """Calibrate ``clf`` by ``prompt.calibrate`` (dev texts; for ``pool``, a seeded sample of the
        unlabelled pool and the labelled examples' class share); what was fitted, for the report."""
        pc = self.cfg.prompt
        pool = pool_subset(task.pool, pc.calibration_pool, task.seed) if pc.calibrate == "pool" else None
        return calibrate(clf, pc.calibrate, list(task.dev["text"]), np.asarray(task.dev["label"]),
                         self.cfg.eval.batch_size, pool_texts=pool, prior=task.labelled_share(),
                         progress=self.bar(f"{label}: calibration on the pool"), check_dev=pc.calibrate_check)

    def classifier(self, mode: str, model, task: Task, template: Template | None, verb: Verbalizer | None,
                   labels: list[str] | None = None) -> Classifier:
        """A classifier of ``mode`` over ``model`` with this run's prompt settings."""
        return make_classifier(mode, model, self.tokenizer, labels or task.names, template, verb,
                               max_length=self.cfg.prompt.max_length, pooling=self.cfg.finetune.pooling,
                               scale=self.cfg.prompt.similarity_scale, mesh=self.mesh)

    def checkpointing(self, name: str, directory: str, keys: tuple[str, ...], upstream: Mapping[str, Any],
                      inputs: dict[str, Any] | None = None) -> Checkpointing:
        """A stage's checkpoint directory and fingerprint: the config keys it reads, what it was
        given (``inputs``, e.g. the chosen template) and the fingerprints of the stages before it."""
        fp = {"stage": name, "keys": config_values(self.cfg, keys), "inputs": inputs or {},
              "upstream": dict(upstream)}
        return Checkpointing(self.out / "checkpoints" / directory, self.cfg.checkpoint, fp)


@dataclasses.dataclass(frozen=True)
class SeedState:
    """One split seed's way through the stages. ``results``: this seed's report entries (stage
    name -> what it measured and chose); ``run_results``: the entries of run-level stages
    (pretrain, retrieval, export)."""

    seed: int
    model: nnx.Module
    task: Task | None = None
    mode: str = ""  # the classifier fine-tuned and exported: prompt | similarity | head
    prompt_mode: str = ""  # the prompt's own scoring (prompt | similarity): the baselines use it
    template: Template | None = None
    verbalizer: Verbalizer | None = None
    template_candidates: tuple[str, ...] = ()
    rule_verbalizer: Verbalizer | None = None  # the label words from the label names (an ensemble's second set)
    classifier: Classifier | None = None
    ensemble: Classifier | None = None  # the prompt ensemble (stage ensemble), distill's teacher after selftrain
    student: Classifier | None = None  # the distill stage's student (head mode), exported to export/student
    handover: Handover | None = None  # fitted by the evaluate stage when handover.enabled
    retriever: Any = None  # the retrieval stage's Retriever, exported to export/retriever
    finetune: dict | None = None  # the chosen fine-tuning run's summary (dev accuracy, log-loss, step)
    pretuned: nnx.Module | None = None  # the weights fine-tuning started from (self-training's students start there)
    # (model, summary) of the prompt fine-tuning baseline when the real fine-tuning would repeat it
    baseline_ft: tuple[Any, dict] | None = None
    fingerprints: Mapping[str, Any] = dataclasses.field(default_factory=_empty)  # stage -> fingerprint of its checkpoints
    results: Mapping[str, Any] = dataclasses.field(default_factory=_empty)
    run_results: Mapping[str, Any] = dataclasses.field(default_factory=_empty)

    def replace(self, **changes) -> "SeedState":
        return dataclasses.replace(self, **changes)

    def record(self, key: str, value: Any, **changes) -> "SeedState":
        """A new state with ``results[key] = value`` (and ``changes``)."""
        return self.replace(results=types.MappingProxyType({**self.results, key: value}), **changes)

    def record_run(self, key: str, value: Any, **changes) -> "SeedState":
        return self.replace(run_results=types.MappingProxyType({**self.run_results, key: value}), **changes)

    def fingerprinted(self, name: str, fp: dict) -> "SeedState":
        return self.replace(fingerprints=types.MappingProxyType({**self.fingerprints, name: fp}))

    @property
    def task_template(self) -> Template | None:
        return self.template if self.mode != "head" else None

    @property
    def task_verbalizer(self) -> Verbalizer | None:
        return self.verbalizer if self.mode != "head" else None


def ensure_classifier(ctx: RunContext, state: SeedState) -> SeedState:
    """The state with the classifier of its mode over its current model (built when missing)."""
    if state.classifier is not None and state.classifier.model is state.model:
        return state
    clf = ctx.classifier(state.mode, state.model, state.task, state.task_template, state.task_verbalizer)
    return state.replace(classifier=clf)
