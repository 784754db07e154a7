"""Backbone selection (``select.configs``, or ``model.name_or_path auto``): screen each candidate
config on this run's task — its first learning rate, ``select.steps`` steps or its own, no test
evaluation — and run the one with the best dev accuracy (ties: the lower dev log-loss) into this
run's output_dir.

Every setting the selecting config was given (its YAML file's and the command line's: data files,
task, prompt, any key) reaches every candidate, or the run stops naming the key it cannot forward.
A candidate whose fixed label words do not fit the task's classes is refused before anything
trains, never run on a task of its own.

With ``select.combine`` (auto, dev, always, never) the screened candidates, weighted by dev
accuracy, are combined into one ensemble (dev: when the combination's dev accuracy is at least the
best single one's; auto: always for the packaged recipes, dev for listed configs): each then runs its
own config (the best into output_dir, the others under output_dir/members/) and the export holds
them all.

``run_one(cfg, reuse=None) -> PipelineRun`` runs one pipeline; it is passed in (by
``pipeline.run_pipeline``) so that this module does not import the pipeline that imports it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from autogpt_jax import export_format
from autogpt_jax.config import Config, load_config
from autogpt_jax.data.task import class_names
from autogpt_jax.ensemble import Ensemble, combine, member_weights
from autogpt_jax.errors import ConfigError
from autogpt_jax.evaluation import evaluate, log_loss, mean_std
from autogpt_jax.models import hub
from autogpt_jax.prompts.search import parse_label_words
from autogpt_jax.stages.context import config_values

log = logging.getLogger(__name__)

# The packaged candidate recipes (autogpt_jax/recipes/<name>.yaml), screened by model.name_or_path auto.
RECIPES_DIR = Path(__file__).parent / "recipes"
AUTO_RECIPES = ("encoder", "decoder")
# Keys the selection itself sets on each candidate (or that describe the selection).
OWN_KEYS = ("output_dir", "stages", "eval.seeds")


def recipe_path(entry: str) -> str:
    """A select.configs entry: a config file, or the name of a packaged recipe (encoder, decoder)."""
    if Path(entry).is_file():
        return entry
    packaged = RECIPES_DIR / f"{entry}.yaml"
    if packaged.is_file():
        return str(packaged)
    names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise ConfigError(f"select.configs: {entry!r} is neither a config file nor a packaged recipe ({names})")


ENCODER_TYPES = ("bert", "roberta", "distilbert", "xlm-roberta", "electra", "mpnet")
PACKAGED_KINDS = {"minilm-l6": "encoder", "splade-tiny": "encoder", "smollm2-135m": "decoder"}


def recipe_for(name_or_path: str) -> str:
    """The packaged recipe of a backbone: ``encoder`` for BERT-family models, ``decoder`` otherwise."""
    kind = PACKAGED_KINDS.get(name_or_path)
    if kind is None:
        model_type = hub.read_config(hub.resolve(name_or_path)).get("model_type", "")
        kind = "encoder" if model_type in ENCODER_TYPES else "decoder"
    return recipe_path(kind)


def with_default_recipe(argv: list[str]) -> list[str]:
    """A command line without --config_path that names labelled data and a backbone starts from the
    backbone's packaged recipe (the recipe for any task), not from the bare defaults."""
    keys = {a[2:].split("=", 1)[0]: i for i, a in enumerate(argv) if a.startswith("--")}
    if "config_path" in keys or not ({"data.train_file", "data.dataset"} & set(keys)):
        return list(argv)
    i = keys.get("model.name_or_path")
    if i is None:
        return list(argv)
    a = argv[i]
    name = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
    if name in ("auto", "null", "None", ""):
        return list(argv)
    return ["--config_path", recipe_for(name), *argv]


def candidates(cfg: Config) -> list[str]:
    if cfg.select.config_list:
        return [recipe_path(c) for c in cfg.select.config_list]
    return [recipe_path(c) for c in AUTO_RECIPES]


def cli_value(v: Any) -> str:
    """A config value as the command line writes it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def forwarded(cfg: Config) -> list[str]:
    """The selecting config's given settings as command-line overrides for a candidate."""
    out: list[str] = []  # cfg.given holds only keys load_config validated
    for key in cfg.given:
        if key.startswith("select.") or key in OWN_KEYS:
            continue
        if key == "model.name_or_path" and cfg.model.name_or_path != "auto":
            raise ConfigError(f"model.name_or_path {cfg.model.name_or_path!r} cannot be forwarded to the candidates of "
                              "select.configs: each candidate names its own backbone. Drop select.configs to train "
                              "that model, or drop model.name_or_path to screen the candidates")
        if key == "model.name_or_path":
            continue
        out += [f"--{key}", cli_value(config_values(cfg, (key,))[key])]
    return out


def _check_fits(cand: Config, path: str, names: list[str]):
    """A candidate's fixed label words must name this task's classes."""
    try:
        parse_label_words(cand.prompt.label_words, names)
    except ConfigError as e:
        raise ConfigError(f"candidate {path} does not fit this task ({len(names)} classes: {', '.join(names[:8])}"
                          f"{', ...' if len(names) > 8 else ''}): {e}. Set --prompt.label_words for the task, or "
                          "choose other candidates") from None


def select_backbone(cfg: Config, run_one: Callable[..., Any]):
    """Screen the candidates, then run the best one with its own stages (unless this config sets
    some); the returned run's report carries ``backbone_selection``."""
    out, rows, screens, skipped = Path(cfg.output_dir), [], {}, []
    names = class_names(cfg.data)
    common = ["--seed", str(cfg.seed), *forwarded(cfg)]
    plans = []
    for path in candidates(cfg):
        cand = load_config(["--config_path", path, *common])
        if cand.select.config_list or cand.model.name_or_path == "auto":
            raise ConfigError(f"select.configs: candidate {path} selects among candidates itself; list configs that "
                              "name their model")
        if cfg.data.dataset and cand.data.dataset != cfg.data.dataset:
            raise ConfigError(f"select.configs: candidate {path} uses dataset {cand.data.dataset!r}, this config "
                              f"{cfg.data.dataset!r}; candidates must share the task")
        _check_fits(cand, path, names)
        if cand.select.max_classes is not None and len(names) > cand.select.max_classes:
            skipped.append({"config": path, "reason": f"{len(names)} classes > its select.max_classes "
                                                      f"{cand.select.max_classes}"})
            log.warning("select: %s skipped (%s)", path, skipped[-1]["reason"])
            continue
        plans.append((path, cand))
    if not plans:
        raise ConfigError(f"select: no candidate fits a task of {len(names)} classes ({skipped})")
    combining, devs = cfg.select.combine != "never" and len(plans) > 1, {}
    # One candidate left of the packaged ones: nothing to choose, so no screen (a listed config is screened).
    for path, cand in plans if len(plans) > 1 or cfg.select.config_list else []:
        t = time.perf_counter()
        # With select.combine the screen also scores dev once more (stage evaluate, no test rows), so
        # that the candidates' combination can be scored on the same rows.
        screen = load_config(["--config_path", path, *common, "--output_dir", str(out / "select" / Path(path).stem),
                              "--stages", "finetune,evaluate" if combining else "finetune", "--data.max_test", "0",
                              "--eval.compare", "false", "--finetune.refit", "false",
                              "--finetune.learning_rates", repr(cand.finetune.lr_grid[0]),
                              "--finetune.steps", str(cfg.select.steps or cand.finetune.steps)])
        srun = run_one(screen)
        chosen = srun.exported.finetune
        if combining:
            s_ = srun.exported
            devs[path] = (s_.classifier.logits(list(s_.task.dev["text"]), cfg.eval.batch_size),
                          np.asarray(s_.task.dev["label"]))
        # The winner's own run can start from this screen when the screen is exactly its first grid
        # point: same steps, no adaptation or joint loss before it, fixed template and label words.
        if (screen.finetune.steps == cand.finetune.steps and "adapt" not in cand.stage_list
                and cand.finetune.mlm_weight == 0 and cand.prompt.template and cand.prompt.label_words
                and cand.finetune.mode == "prompt"):
            screens[path] = {(cfg.data.split_seed, cand.finetune.lr_grid[0]): (srun.model, chosen)}
        rows.append({"config": path, "model": srun.report["model"], "parameters": srun.report["parameters"],
                     "dev_accuracy": chosen["best_dev_accuracy"], "dev_log_loss": chosen["best_dev_log_loss"],
                     "learning_rate": cand.finetune.lr_grid[0], "steps": cfg.select.steps or cand.finetune.steps,
                     "seconds": round(time.perf_counter() - t, 1)})
        del srun
        log.warning("select: %s (%s) dev accuracy %.3f", path, rows[-1]["model"], chosen["best_dev_accuracy"])
    # Dev accuracy moves in steps of 1/|dev|: ties go to the lower dev log-loss (then the earlier).
    ranked = sorted(rows, key=lambda r: (r["dev_accuracy"], -(r["dev_log_loss"] or 0.0)), reverse=True)
    best = ranked[0] if rows else {"config": plans[0][0], "model": plans[0][1].model.name_or_path}
    rule = cfg.select.combine if cfg.select.combine != "auto" else ("dev" if cfg.select.config_list else "always")
    combo = _combination(ranked, devs, rule) if combining else None
    extra = ["--eval.seeds", cfg.eval.seeds] if cfg.eval.seeds else []  # the screen uses data.split_seed only
    if cfg.stages is not None:  # stages set on the selecting config (or its command line) win
        extra += ["--stages", cfg.stages]
    run = run_one(load_config(["--config_path", best["config"], *common, *extra, "--output_dir", str(out)]),
                  reuse=screens.pop(best["config"], None))
    sel = {"chosen": best["config"], "model": best["model"], "candidates": rows, "skipped": skipped,
           "forwarded": forwarded(cfg)}
    if combo is not None:
        sel["combination"] = combo
        if combo["chosen"]:
            others = [run_one(load_config(["--config_path", r["config"], *common, *extra, "--output_dir",
                                           str(out / "members" / Path(r["config"]).stem)])) for r in ranked[1:]]
            run = combined_run([run, *others], combo["weights"], cfg.eval.batch_size)
    run.report["backbone_selection"] = sel
    run.write_report()
    return run


def _combination(ranked: list[dict], devs: dict[str, tuple[np.ndarray, np.ndarray]], rule: str) -> dict:
    """The screened candidates (best first) as one ensemble weighted by dev accuracy, scored on the
    screen's dev rows; chosen always, or (``dev``) when its dev accuracy is at least the best single
    candidate's."""
    weights = member_weights([r["dev_accuracy"] for r in ranked], "dev")
    logits = combine([devs[r["config"]][0] for r in ranked], weights)
    gold = devs[ranked[0]["config"]][1]
    acc = float((logits.argmax(-1) == gold).mean())
    holds = acc >= ranked[0]["dev_accuracy"]
    return {"configs": [r["config"] for r in ranked], "weights": [float(w) for w in weights], "dev_accuracy": acc,
            "dev_log_loss": log_loss(logits, gold), "holds_on_dev": holds, "rule": rule,
            "chosen": rule == "always" or holds}


def combined_run(runs: list, weights: list[float], batch_size: int):
    """One task model from several finished runs (the first ran into the output directory): their
    classifiers as one ensemble, weighted (an ensemble member's own weight scaled by its run's),
    evaluated on the first run's test and dev rows. The other runs' exports move under the first's
    export/members/; its ``autogpt_jax.json`` lists every member."""
    first = runs[0]
    export = first.out / "export"
    members, mweights, entries = [], [], []
    for k, (r, a) in enumerate(zip(runs, weights)):
        base = "."
        if k:
            base = f"members/backbone{k}"
            shutil.rmtree(export / base, ignore_errors=True)
            shutil.move(str(r.out / "export"), str(export / base))
        meta = export_format.read_meta(export / base)
        clf = r.classifier
        inner = meta.get("ensemble")
        parts = list(zip(clf.members, clf.weights, inner["members"])) if inner else [(clf, 1.0, {"dir": "."})]
        for m, w, e in parts:
            members.append(m)
            mweights.append(a * float(w))
            entries.append({**{k_: v for k_, v in e.items() if k_ not in ("dir", "weight")}, "backbone": r.report["model"],
                            "dir": os.path.normpath(os.path.join(base, e["dir"]))})
    ens = Ensemble(members, np.asarray(mweights), "dev", entries)
    export_format.join_ensemble(export, {"weighting": "dev", "members": [
        {**e, "weight": float(w)} for e, w in zip(entries, ens.weights)]})
    state = first.exported
    task, rep = state.task, first.report
    seed = next(s for s in rep["seeds"] if s["seed"] == state.seed)
    seed["members"] = [{"model": r.report["model"], "weight": float(a),
                        **{k: (r.report["seeds"][0].get(k) or {}).get("accuracy") for k in ("test", "dev")}}
                       for r, a in zip(runs, weights)]
    if len(task.test):
        # each member's test logits (memoised by its own run's evaluation): scored once, combined,
        # and saved for studying the weighting
        lgs = ens.member_logits(list(task.test["text"]), batch_size)
        seed["test"] = evaluate(ens, task.test, batch_size, logits=combine(lgs, ens.weights))
        np.savez_compressed(first.out / "members_test_logits.npz", gold=np.asarray(task.test["label"]),
                            weights=ens.weights, **{f"member{i}": lg for i, lg in enumerate(lgs)})
        rep.setdefault("summary", {}).update(test_accuracy=mean_std([seed["test"]["accuracy"]]),
                                             test_macro_f1=mean_std([seed["test"]["macro_f1"]]))
    seed["dev"] = {**evaluate(ens, task.dev, batch_size), **({"note": seed["dev"]["note"]} if "note" in seed.get(
        "dev", {}) else {})}
    rep.setdefault("export", {})["ensemble_members"] = len(members)
    return dataclasses.replace(first, exported=state.replace(classifier=ens, ensemble=ens))
