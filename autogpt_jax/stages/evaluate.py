"""Stage ``evaluate``: the task classifier on the test and dev splits; with ``handover.enabled``,
the temperature and hand-over threshold fitted on dev (plus out-of-scope dev queries) and
measured on test."""

from __future__ import annotations

from typing import Any

import numpy as np

from autogpt_jax import handover
from autogpt_jax.data import sources
from autogpt_jax.data.task import Task
from autogpt_jax.evaluation import evaluate
from autogpt_jax.inference import Classifier
from autogpt_jax.stages.context import RunContext, SeedState, ensure_classifier


def fit_handover(ctx: RunContext, clf: Classifier, task: Task, dev_logits: np.ndarray, test_logits: np.ndarray
                 ) -> tuple[handover.Handover, dict[str, Any]]:
    """Temperature and hand-over threshold fitted on dev (plus out-of-scope dev queries when
    configured), measured on test (plus out-of-scope test queries)."""
    hc, bs = ctx.cfg.handover, ctx.cfg.eval.batch_size
    oos = sources.out_of_scope(hc.out_of_scope) if hc.out_of_scope else None
    oos_dev = clf.logits(oos["dev"], bs) if oos else None
    h = handover.calibrate(dev_logits, np.asarray(task.dev["label"]), oos_dev, in_scope_recall=hc.in_scope_recall,
                           threshold=hc.threshold)
    rep = {**h.to_json(), "out_of_scope": hc.out_of_scope, "threshold_source": "config" if hc.threshold is not None
           else ("dev + out-of-scope dev" if oos else f"dev (keeps {hc.in_scope_recall:.0%} of correct answers)"),
           "dev": handover.measure(h, dev_logits, np.asarray(task.dev["label"]), oos_dev),
           "test": handover.measure(h, test_logits, np.asarray(task.test["label"]),
                                    clf.logits(oos["test"], bs) if oos else None)}
    return h, rep


def run(ctx: RunContext, state: SeedState) -> SeedState:
    state = ensure_classifier(ctx, state)
    clf, task, bs = state.classifier, state.task, ctx.cfg.eval.batch_size
    test_logits, dev_logits = (clf.logits(list(ds["text"]), bs, progress=ctx.bar(f"evaluate ({name})"))
                               for name, ds in (("test", task.test), ("dev", task.dev)))
    if len(task.test):  # no test file: dev figures only
        state = state.record("test", evaluate(clf, task.test, bs, logits=test_logits))
    dev = evaluate(clf, task.dev, bs, logits=dev_logits)
    if task.dev_held_out and ctx.cfg.finetune.refit:  # the final model trained on these rows too: not a held-out figure
        dev = {**dev, "note": "dev rows were held out to choose the recipe, then trained on (train + dev)"}
    state = state.record("dev", dev)
    if ctx.cfg.handover.enabled:
        h, rep = fit_handover(ctx, clf, task, dev_logits, test_logits)
        state = state.record("handover", rep, handover=h)
    return state
