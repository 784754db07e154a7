"""Stage ``selftrain`` (iPET generations, noisy student): the task model -- the ensemble when
there is one -- labels the unlabelled pool; each class's most confident texts above
``selftrain.threshold`` (the same number per class) join the K labelled examples, with the
teacher's distribution at ``selftrain.temperature`` as their target (one-hot for the labelled
ones) and word dropout as their noise; a student of the same backbone, started from the weights
fine-tuning started from, learns them with the chosen prompt (and optionally the joint loss) and
is the next generation's teacher. Every generation keeps ``growth`` times as many pool texts.
``selftrain.consistency_weight`` adds UDA's consistency term between every pool text and its
word-dropped view. With ``selftrain.ipet`` every generation retrains each member of the prompt
ensemble instead, on the labels of the ensemble of the other members, and the next teacher is the
ensemble of the new members. The task model after the stage is the one ``selftrain.keep`` picks:
the best on dev among the stage's teacher and its generations, or the last generation."""

from __future__ import annotations

import time

import numpy as np

from autogpt_jax.ensemble import Ensemble, combine
from autogpt_jax.errors import ConfigError
from autogpt_jax.evaluation import evaluate
from autogpt_jax.pseudolabels import label_pool, pool_subset, select_confident, soft_targets, word_dropout
from autogpt_jax.stages.context import RunContext, SeedState, ensure_classifier
from autogpt_jax.stages.ensemble import calibrate_member, member_entry, member_specs, weigh
from autogpt_jax.stages.finetune import dev_figures, grid_finetune, selection_key

MAX_STEP_GROWTH = 4  # a generation trains at most this many times finetune.steps (by default)


def student_steps(ctx: RunContext, n_examples: int, n_labelled: int) -> int:
    """``selftrain.steps``, or fine-tuning's steps scaled by how much larger the data is (at most 4×)."""
    sc, fc = ctx.cfg.selftrain, ctx.cfg.finetune
    if sc.steps is not None:
        return sc.steps
    return int(round(fc.steps * min(MAX_STEP_GROWTH, n_examples / max(n_labelled, 1))))


def pseudo_data(ctx: RunContext, task, pool: list[str], logits: np.ndarray, generation: int, member: int = 0
                ) -> tuple[list[str], np.ndarray, dict]:
    """The student's training data for ``generation``: the K labelled examples (one-hot) and the
    chosen pool texts (noised, soft-labelled; ``member``: an iPET member's own noise); and what was
    chosen, for the report."""
    sc, C = ctx.cfg.selftrain, len(task.names)
    probs = soft_targets(logits, 1.0)
    idx = select_confident(probs, sc.kept_per_class(generation), sc.threshold, sc.min_per_class)
    targets = soft_targets(logits[idx], sc.temperature)
    noisy = word_dropout([pool[i] for i in idx], sc.word_dropout, task.seed * 100 + generation + 1000 * member)
    texts = list(task.train["text"]) + noisy
    y = np.concatenate([np.eye(C, dtype=np.float32)[np.asarray(task.train["label"])], targets])
    pred = probs.argmax(-1)
    rep = {"pool": len(pool), "kept_per_class": len(idx) // C, "threshold": sc.threshold,
           "above_threshold_per_class": [int(((pred == c) & (probs.max(-1) >= sc.threshold)).sum()) for c in range(C)],
           "pool_prediction_share": [float((pred == c).mean()) for c in range(C)],
           "min_kept_confidence": float(probs.max(-1)[idx].min()),
           "threshold_relaxed": bool(probs.max(-1)[idx].min() < sc.threshold)}
    return texts, y, rep


def consistency_views(ctx: RunContext, task, pool: list[str], generation: int):
    """UDA's (clean, word-dropped, weight) over the whole pool, or None when the term is off."""
    sc = ctx.cfg.selftrain
    if sc.consistency_weight <= 0:
        return None
    return pool, word_dropout(pool, sc.word_dropout, task.seed * 100 + 50 + generation), sc.consistency_weight


def kept_generation(keep: str, devs: list[dict]) -> int:
    """Which of [the stage's teacher, generation 1, ...] (their ``dev_figures``) is the task model:
    ``keep`` last, the last generation; best, the best dev accuracy, ties to the lower dev
    log-loss, then to the earlier (self-training has to show it helped)."""
    if keep == "last":
        return len(devs) - 1
    keys = [selection_key({"best_dev_accuracy": d["dev_accuracy"], "best_dev_log_loss": d["dev_log_loss"]})
            for d in devs]
    return max(range(len(devs)), key=lambda i: (keys[i], -i))


def kept_report(sc, teacher_dev: dict, gens: list[dict]) -> tuple[int, dict]:
    """The kept generation and the stage report's entries that say why."""
    k = kept_generation(sc.keep, [teacher_dev] + gens)
    return k, {"keep": sc.keep, "kept_generation": k, "teacher_dev": teacher_dev}


def run(ctx: RunContext, state: SeedState) -> SeedState:
    state = ensure_classifier(ctx, state)
    cfg, sc, task, bs = ctx.cfg, ctx.cfg.selftrain, state.task, ctx.cfg.eval.batch_size
    pool = pool_subset(task.pool, sc.max_unlabeled, task.seed)
    if sc.ipet:
        return run_ipet(ctx, state, pool)
    teacher, cache = state.classifier, ctx.out / "cache" / "pool_labels"
    lrs = sc.lr_grid or (state.finetune["learning_rate"],)
    gens = []
    teacher_dev = dev_figures(teacher, task, bs)
    candidates = [(state.model, state.classifier, state.finetune)]
    for g in range(1, sc.generations + 1):
        t0 = time.perf_counter()
        logits, cached = label_pool(teacher, pool, cache, bs, progress=ctx.bar(f"selftrain {g}/{sc.generations}: labelling the pool"))
        texts, y, rep = pseudo_data(ctx, task, pool, logits, g)
        rep.update(generation=g, labels_from_cache=cached, examples=len(texts))
        steps = student_steps(ctx, len(texts), len(task.train))
        cons = consistency_views(ctx, task, pool, g)
        model, grid = grid_finetune(ctx, task, state.pretuned, state.mode, state.task_template,
                                    state.task_verbalizer, stage=f"selftrain-{g}", mlm_weight=sc.mlm_weight,
                                    lrs=lrs, data=(texts, y), steps=steps, consistency=cons)
        clf = ctx.classifier(state.mode, model, task, state.task_template, state.task_verbalizer)
        if cfg.prompt.calibrate != "none" and state.mode != "head":
            rep["calibration"] = ctx.calibrate(clf, task, f"selftrain {g}")
        rep.update(steps=steps, student=grid["chosen"], **dev_figures(clf, task, bs),
                   wall_s=round(time.perf_counter() - t0, 1))
        if cfg.eval.compare:
            rep["test_accuracy"] = evaluate(clf, task.test, bs, progress=ctx.bar(f"selftrain {g}: test"))["accuracy"]
        gens.append(rep)
        candidates.append((model, clf, grid["chosen"]))
        teacher = clf
    k, kept = kept_report(sc, teacher_dev, gens)
    model, clf, chosen = candidates[k]
    return state.record("selftrain", {"generations": gens, **kept, "temperature": sc.temperature,
                                      "word_dropout": sc.word_dropout, "mlm_weight": sc.mlm_weight,
                                      "consistency_weight": sc.consistency_weight},
                        model=model, classifier=clf, finetune=chosen)


def run_ipet(ctx: RunContext, state: SeedState, pool: list[str]) -> SeedState:
    """iPET's generations: member i of generation g is member i's prompt (template, label words,
    seed) fine-tuned again from the weights fine-tuning started from, on the K labelled examples and
    the pool texts that the other members of generation g-1 (weighted as the ensemble weights them)
    label most confidently; generation g's ensemble combines the new members, weighted by their dev
    accuracy (or uniformly, as prompt.ensemble_weighting says)."""
    cfg, sc, task, bs = ctx.cfg, ctx.cfg.selftrain, state.task, ctx.cfg.eval.batch_size
    ens = state.ensemble
    if not isinstance(ens, Ensemble):
        raise ConfigError(f"selftrain.ipet retrains the prompt ensemble's members, and this run has none "
                          f"(the {state.mode} classifier builds no ensemble): use a prompt or similarity "
                          "finetune.mode with prompt.ensemble >= 2, or selftrain.ipet false")
    specs, cache, n = member_specs(ctx, state), ctx.out / "cache" / "pool_labels", len(ens.members)
    gens, teacher_dev = [], dev_figures(ens, task, bs)
    candidates = [(state.model, state.classifier, state.ensemble, state.finetune)]
    for g in range(1, sc.generations + 1):
        t0 = time.perf_counter()
        labelled = [label_pool(m, pool, cache, bs, progress=ctx.bar(f"selftrain {g}/{sc.generations}: "
                                                                     f"member {i + 1}/{n} labels the pool"))
                    for i, m in enumerate(ens.members)]
        members, info, reps = [], [], []
        for i, (template, verb, seed) in enumerate(specs):
            others = [j for j in range(n) if j != i]
            w = ens.weights[others] / ens.weights[others].sum()
            texts, y, rep = pseudo_data(ctx, task, pool, combine([labelled[j][0] for j in others], w), g, member=i + 1)
            steps = student_steps(ctx, len(texts), len(task.train))
            model, grid = grid_finetune(ctx, task, state.pretuned, state.mode, template, verb,
                                        stage=f"selftrain-{g}-{i + 1}", mlm_weight=sc.mlm_weight,
                                        lrs=sc.lr_grid or (ens.info[i]["learning_rate"],), seed_offset=seed,
                                        data=(texts, y), steps=steps, consistency=consistency_views(ctx, task, pool, g))
            clf = ctx.classifier(state.mode, model, task, template, verb)
            chosen = grid["chosen"]
            entry = {**member_entry(template, verb, seed, chosen), "taught_by": [j + 1 for j in others]}
            calibrate_member(ctx, task, clf, entry, f"selftrain {g} member {i + 1}")
            rep.update(member=i + 1, taught_by=entry["taught_by"], examples=len(texts), steps=steps,
                       student=chosen, dev_accuracy=entry["dev_accuracy"],
                       labels_from_cache=all(labelled[j][1] for j in others))
            members.append(clf)
            info.append(entry)
            reps.append(rep)
        ens = Ensemble(members, weigh(info, cfg.prompt.ensemble_weighting), cfg.prompt.ensemble_weighting, info)
        gen = {"generation": g, "members": reps, "ensemble_members": info, **dev_figures(ens, task, bs)}
        if cfg.eval.compare:
            gen["test_accuracy"] = evaluate(ens, task.test, bs, progress=ctx.bar(f"selftrain {g}: test"))["accuracy"]
        gen["wall_s"] = round(time.perf_counter() - t0, 1)
        gens.append(gen)
        candidates.append((members[0].model, ens, ens, reps[0]["student"]))
    k, kept = kept_report(sc, teacher_dev, gens)
    model, clf, ensemble, chosen = candidates[k]
    return state.record("selftrain", {"generations": gens, **kept, "ipet": True, "temperature": sc.temperature,
                                      "word_dropout": sc.word_dropout, "mlm_weight": sc.mlm_weight,
                                      "consistency_weight": sc.consistency_weight},
                        model=model, classifier=clf, ensemble=ensemble, finetune=chosen)
