"""Stage ``ensemble`` (after finetune, when ``prompt.ensemble`` > 1 or ``prompt.calibrate`` is set):
calibration of the fine-tuned prompt classifier, and the prompt ensemble (PET): the next best
prompts -- ranked (template, label words) pairs, then again with other training seeds -- are
fine-tuned the same way (lr grid on dev each) and combined by weighted log-probabilities.
Member 0 is the fine-tuning stage's own model. With ``eval.compare`` the test accuracy of each
step is recorded (single model, calibrated, each ensemble weighting): the ladder of the benchmark."""

from __future__ import annotations

from typing import Any

import numpy as np

from autogpt_jax.ensemble import Ensemble, combine, member_weights
from autogpt_jax.evaluation import evaluate
from autogpt_jax.prompts.templates import Template, Verbalizer
from autogpt_jax.stages.context import RunContext, SeedState
from autogpt_jax.stages.finetune import grid_finetune


def member_specs(ctx: RunContext, state: SeedState) -> list[tuple[Template, Verbalizer, int]]:
    """(template, label words, seed index) of every member, best first: the ranked templates with
    the chosen label words, then with the rule words (when they were searched and differ), then
    the same pairs with the next seeds, until ``prompt.ensemble`` are listed."""
    pc = ctx.cfg.prompt
    ranked = [c["template"] for c in state.results.get("prompt", {}).get("template_candidates", [])]
    templates = [state.template] + [Template(t).with_demos(list(state.template.demos)) for t in ranked
                                    if t != state.template.source]
    verbs = [state.verbalizer]
    rule = state.rule_verbalizer
    searched = str(state.results.get("prompt", {}).get("label_words_source", "")).startswith("search")
    if searched and rule is not None and rule.to_json() != state.verbalizer.to_json():
        verbs.append(rule)
    pairs = [(t, v) for v in verbs for t in templates]
    specs, seed = [], 0
    while len(specs) < pc.ensemble:  # past the configured seeds only when pairs turned out to coincide
        specs += [(t, v, seed) for t, v in pairs][: pc.ensemble - len(specs)]
        seed += 1
    return specs


def member_entry(template: Template, verb: Verbalizer, seed: int, chosen: dict) -> dict[str, Any]:
    """A member's report (and export) entry: its prompt, seed and the grid point fine-tuning chose."""
    return {"template": template.source, "label_words": verb.to_json(), "seed": seed,
            "learning_rate": chosen["learning_rate"], "fine_tuned_dev_accuracy": chosen["best_dev_accuracy"]}


def calibrate_member(ctx: RunContext, task, clf, entry: dict[str, Any], label: str) -> None:
    """Calibrate a member by ``prompt.calibrate`` (when set) and record what was fitted and its dev accuracy."""
    if ctx.cfg.prompt.calibrate != "none":
        entry["calibration"] = ctx.calibrate(clf, task, label)
    entry["dev_accuracy"] = evaluate(clf, task.dev, ctx.cfg.eval.batch_size)["accuracy"]


def weigh(info: list[dict[str, Any]], weighting: str) -> np.ndarray:
    """The members' weights by their dev accuracy (``weighting``), also written into their entries."""
    weights = member_weights([e["dev_accuracy"] for e in info], weighting)
    for e, w in zip(info, weights):
        e["weight"] = float(w)
    return weights


def run(ctx: RunContext, state: SeedState) -> SeedState:
    cfg, pc, task, bs = ctx.cfg, ctx.cfg.prompt, state.task, ctx.cfg.eval.batch_size
    if state.mode == "head":
        return state
    compare = cfg.eval.compare
    test_texts = list(task.test["text"])
    members, info, ladder = [], [], {}
    for i, (template, verb, seed) in enumerate(member_specs(ctx, state)):
        if i == 0:
            model, rep = state.model, state.finetune
        else:
            model, grid = grid_finetune(ctx, task, state.pretuned, state.mode, template, verb, stage=f"ensemble-{i}",
                                        mlm_weight=cfg.finetune.mlm_weight, seed_offset=seed)
            rep = grid["chosen"]
        clf = ctx.classifier(state.mode, model, task, template, verb)
        entry = member_entry(template, verb, seed, rep)
        if compare and i == 0:
            ladder["single"] = evaluate(clf, task.test, bs, progress=ctx.bar("ensemble: test (member 1)"))["accuracy"]
        calibrate_member(ctx, task, clf, entry, f"ensemble member {i + 1}")
        if compare and i == 0 and pc.calibrate != "none":
            ladder["single_calibrated"] = evaluate(clf, task.test, bs,
                                                   progress=ctx.bar("ensemble: test (member 1, calibrated)"))["accuracy"]
        members.append(clf)
        info.append(entry)
    weights = weigh(info, pc.ensemble_weighting)
    rep = {"members": info, "weighting": pc.ensemble_weighting, "calibrate": pc.calibrate}
    if len(members) == 1:
        clf = members[0]
    else:
        clf = Ensemble(members, weights, pc.ensemble_weighting, info)
        if compare:
            test_logits = clf.member_logits(test_texts, bs, progress=ctx.bar("ensemble: test"))
            for name in ("uniform", "dev"):
                w = member_weights([e["dev_accuracy"] for e in info], name)
                ladder[f"ensemble_{name}"] = evaluate(clf, task.test, bs, logits=combine(test_logits, w))["accuracy"]
        rep["dev_accuracy"] = evaluate(clf, task.dev, bs)["accuracy"]
    if ladder:
        rep["test_ladder"] = ladder
    return state.record("ensemble", rep, classifier=clf, ensemble=clf if len(members) > 1 else None)
