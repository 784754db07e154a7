"""Stage ``adapt``: adaptive training on the task's unlabelled text and prompted training
sentences — masked-LM with prompt-aware masking for encoders, causal-LM for decoders;
checkpointed per split seed and resumable."""

from __future__ import annotations

import dataclasses

from autogpt_jax.config import PromptConfig
from autogpt_jax.evaluation import evaluate
from autogpt_jax.models.build import is_decoder
from autogpt_jax.stages.context import RunContext, SeedState
from autogpt_jax.stages.finetune import mlm_batches, with_peft
from autogpt_jax.training import objectives
from autogpt_jax.training.fit import fit

# What an adaptation checkpoint depends on, besides its split seed, template and label words: not
# the prompt keys that act only after fine-tuning (changing the calibration or the ensemble does not
# train the adaptation again).
AFTER_FINETUNE = ("ensemble", "ensemble_weighting", "ensemble_seeds", "calibrate", "calibration_pool",
                  "calibrate_check")
KEYS = ("seed", "model", "data", "adapt", "peft",
        *(f"prompt.{f.name}" for f in dataclasses.fields(PromptConfig) if f.name not in AFTER_FINETUNE))


def run(ctx: RunContext, state: SeedState) -> SeedState:
    cfg, ac, task = ctx.cfg, ctx.cfg.adapt, state.task
    template, verb = state.template, state.verbalizer
    batches = mlm_batches(ctx, task, state.model, template, verb, ac.batch_size, task.seed)
    decoder = is_decoder(state.model)
    # With PEFT, the fresh MLM head (MiniLM ships none) trains beside the method's parameters.
    model, peft_kw = with_peft(ctx, state.model, objectives.clm_loss if decoder else objectives.mlm_loss, ac.steps,
                               head_paths=() if decoder else ("mlm",))
    ck = ctx.checkpointing("adapt", f"adapt-seed{task.seed}", KEYS, state.fingerprints,
                           inputs={"split_seed": task.seed, "template": template.source, "label_words": verb.to_json()})
    res = fit(stage="adapt", model=model, loss=peft_kw.pop("loss"), optim=ac.optim, steps=ac.steps, batches=batches,
              batch_size=ac.batch_size, batch_key="adapt.batch_size", mesh=ctx.mesh, logger=ctx.logger, seed=cfg.seed,
              progress=cfg.logging.progress, log_every=ac.log_every, checkpoint=ck, extra={"seed": task.seed},
              **peft_kw)
    rep = {"texts": len(task.unlabeled), "objective": "clm" if decoder else "mlm",
           "masking": None if decoder else ac.masking, "resumed_from_step": res.start_step or None,
           "stale_checkpoint": res.stale, **res.summary}
    state = state.record("adapt", rep, model=res.model, classifier=None).fingerprinted("adapt", ck.fingerprint)
    if cfg.eval.compare:
        clf = ctx.classifier(state.prompt_mode, state.model, task, template, verb)
        zs = evaluate(clf, task.test, cfg.eval.batch_size, progress=ctx.bar("adapt: zero-shot test"))
        state = state.record("baselines", {**state.results.get("baselines", {}), "zero_shot_after_adapt": zs})
    return state
