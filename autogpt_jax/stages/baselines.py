"""With ``eval.compare``: the baselines on the same split, before adaptation — the zero-shot
prompt, prompt fine-tuning with the same grid (the "no adapt" ablation) and head fine-tuning."""

from __future__ import annotations

from autogpt_jax.evaluation import evaluate
from autogpt_jax.stages.context import RunContext, SeedState
from autogpt_jax.stages.finetune import grid_finetune


def run(ctx: RunContext, state: SeedState) -> SeedState:
    cfg, task, model, pmode = ctx.cfg, state.task, state.model, state.prompt_mode
    template, verb, bs = state.template, state.verbalizer, cfg.eval.batch_size
    rep = {"zero_shot": evaluate(ctx.classifier(pmode, model, task, template, verb), task.test, bs,
                                 progress=ctx.bar("baselines: zero-shot test"))}
    m_pft, s_pft = grid_finetune(ctx, task, model, pmode, template, verb, stage="baseline-prompt-ft")
    reuse = None
    # When the real fine-tuning would repeat this run exactly (no adapt stage, no joint loss), it is reused.
    if "adapt" not in cfg.stage_list and state.mode == pmode and cfg.finetune.mlm_weight == 0:
        reuse = (m_pft, {**s_pft, "same_as": "baselines.prompt_ft"})
    rep["prompt_ft"] = evaluate(ctx.classifier(pmode, m_pft, task, template, verb), task.test, bs,
                                progress=ctx.bar("baselines: prompt fine-tuning test"))
    if getattr(model, "classifier", None) is not None:
        m_head, _ = grid_finetune(ctx, task, model, "head", None, None, stage="baseline-head-ft",
                                  lrs=cfg.eval.head_lr_grid)
        rep["head_ft"] = evaluate(ctx.classifier("head", m_head, task, None, None), task.test, bs,
                                  progress=ctx.bar("baselines: head fine-tuning test"))
    return state.record("baselines", rep, baseline_ft=reuse)
