"""Stage ``selftrain`` (iPET generations, noisy student): the task model -- the ensemble when
there is one -- labels the unlabelled pool; each class's most confident texts above
``selftrain.threshold`` (the same number per class) join the K labelled examples, with the
teacher's distribution at ``selftrain.temperature`` as their target (one-hot for the labelled
ones) and word dropout as their noise; a student of the same backbone, started from the weights
fine-tuning started from, learns them with the chosen prompt (and optionally the joint loss) and
is the next generation's teacher. Every generation keeps ``growth`` times as many pool texts.
``selftrain.consistency_weight`` adds UDA's consistency term between every pool text and its
word-dropped view."""

from __future__ import annotations

import time

import numpy as np

from autogpt_jax.evaluation import evaluate
from autogpt_jax.pseudolabels import label_pool, pool_subset, select_confident, soft_targets, word_dropout
from autogpt_jax.stages.context import RunContext, SeedState, ensure_classifier
from autogpt_jax.stages.finetune import grid_finetune

MAX_STEP_GROWTH = 4  # a generation trains at most this many times finetune.steps (by default)


def student_steps(ctx: RunContext, n_examples: int, n_labelled: int) -> int:
    """``selftrain.steps``, or fine-tuning's steps scaled by how much larger the data is (at most 4×)."""
    sc, fc = ctx.cfg.selftrain, ctx.cfg.finetune
    if sc.steps is not None:
        return sc.steps
    return int(round(fc.steps * min(MAX_STEP_GROWTH, n_examples / max(n_labelled, 1))))


def pseudo_data(ctx: RunContext, task, pool: list[str], logits: np.ndarray, generation: int
                ) -> tuple[list[str], np.ndarray, dict]:
    """The student's training data for ``generation``: the K labelled examples (one-hot) and the
    chosen pool texts (noised, soft-labelled); and what was chosen, for the report."""
    sc, C = ctx.cfg.selftrain, len(task.names)
    probs = soft_targets(logits, 1.0)
    idx = select_confident(probs, sc.kept_per_class(generation), sc.threshold, sc.min_per_class)
    targets = soft_targets(logits[idx], sc.temperature)
    noisy = word_dropout([pool[i] for i in idx], sc.word_dropout, task.seed * 100 + generation)
    texts = list(task.train["text"]) + noisy
    y = np.concatenate([np.eye(C, dtype=np.float32)[np.asarray(task.train["label"])], targets])
    pred = probs.argmax(-1)
    rep = {"pool": len(pool), "kept_per_class": len(idx) // C, "threshold": sc.threshold,
           "above_threshold_per_class": [int(((pred == c) & (probs.max(-1) >= sc.threshold)).sum()) for c in range(C)],
           "pool_prediction_share": [float((pred == c).mean()) for c in range(C)],
           "min_kept_confidence": float(probs.max(-1)[idx].min()),
           "threshold_relaxed": bool(probs.max(-1)[idx].min() < sc.threshold)}
    return texts, y, rep


def run(ctx: RunContext, state: SeedState) -> SeedState:
    state = ensure_classifier(ctx, state)
    cfg, sc, task, bs = ctx.cfg, ctx.cfg.selftrain, state.task, ctx.cfg.eval.batch_size
    pool = pool_subset(task.pool, sc.max_unlabeled, task.seed)
    teacher, cache = state.classifier, ctx.out / "cache" / "pool_labels"
    lrs = sc.lr_grid or (state.finetune["learning_rate"],)
    gens, model, clf = [], state.model, state.classifier
    for g in range(1, sc.generations + 1):
        t0 = time.perf_counter()
        logits, cached = label_pool(teacher, pool, cache, bs, progress=ctx.bar(f"selftrain {g}/{sc.generations}: labelling the pool"))
        texts, y, rep = pseudo_data(ctx, task, pool, logits, g)
        rep.update(generation=g, labels_from_cache=cached, examples=len(texts))
        steps = student_steps(ctx, len(texts), len(task.train))
        cons = None
        if sc.consistency_weight > 0:  # every pool text, clean and word-dropped
            cons = (pool, word_dropout(pool, sc.word_dropout, task.seed * 100 + 50 + g), sc.consistency_weight)
        model, grid = grid_finetune(ctx, task, state.pretuned, state.mode, state.task_template,
                                    state.task_verbalizer, stage=f"selftrain-{g}", mlm_weight=sc.mlm_weight,
                                    lrs=lrs, data=(texts, y), steps=steps, consistency=cons)
        clf = ctx.classifier(state.mode, model, task, state.task_template, state.task_verbalizer)
        if cfg.prompt.calibrate != "none" and state.mode != "head":
            rep["calibration"] = ctx.calibrate(clf, task, f"selftrain {g}")
        rep.update(steps=steps, student=grid["chosen"], dev_accuracy=evaluate(clf, task.dev, bs)["accuracy"],
                   wall_s=round(time.perf_counter() - t0, 1))
        if cfg.eval.compare:
            rep["test_accuracy"] = evaluate(clf, task.test, bs, progress=ctx.bar(f"selftrain {g}: test"))["accuracy"]
        gens.append(rep)
        teacher = clf
    return state.record("selftrain", {"generations": gens, "temperature": sc.temperature,
                                      "word_dropout": sc.word_dropout, "mlm_weight": sc.mlm_weight,
                                      "consistency_weight": sc.consistency_weight},
                        model=model, classifier=clf, finetune=gens[-1]["student"])
