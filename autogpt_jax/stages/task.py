"""The per-seed setup before the task stages: the K-shot split, the classifier mode, and the rule
prompt (template candidates and label words) that the prompt stage may replace."""

from __future__ import annotations

from autogpt_jax.data.task import prepare_task
from autogpt_jax.errors import ConfigError
from autogpt_jax.prompts.search import parse_label_words
from autogpt_jax.prompts.templates import Template, rule_prompts
from autogpt_jax.stages.context import RunContext, SeedState
from autogpt_jax.training.loop import is_main


def prompt_mode(ctx: RunContext) -> str:
    """The classifier a prompt becomes: ``prompt`` (cloze at the mask) or ``similarity``."""
    scoring = ctx.cfg.prompt.scoring
    encoder = ctx.kind == "encoder"
    if scoring == "auto":
        no_head = any(p.startswith("mlm.") for p in ctx.backbone.fresh)
        scoring = "similarity" if encoder and no_head else "cloze"
    if scoring == "similarity" and not encoder:
        raise ConfigError("prompt.scoring similarity needs a BERT-family sentence encoder; use cloze for GPT-2")
    return "similarity" if scoring == "similarity" else "prompt"


def scoring_name(ctx: RunContext, mode: str) -> str:
    if mode == "similarity":
        return "similarity"
    return "next_token" if ctx.kind == "decoder" else "cloze"


def run(ctx: RunContext, state: SeedState) -> SeedState:
    cfg, seed = ctx.cfg, state.seed
    task = prepare_task(cfg, seed, ctx.out / "splits" / f"seed-{seed}" if is_main() else None)
    pmode = prompt_mode(ctx)
    mode = pmode if cfg.finetune.mode == "prompt" else "head"
    chat = ctx.kind == "decoder" and bool(getattr(ctx.tokenizer, "chat_template", None))
    rule_templates, rule_verb = rule_prompts(cfg.prompt.task_type, task.names, chat=chat)
    verb = parse_label_words(cfg.prompt.label_words, task.names) or rule_verb
    candidates = tuple([cfg.prompt.template] if cfg.prompt.template else rule_templates)
    template = Template(candidates[0])
    state = state.replace(task=task, mode=mode, prompt_mode=pmode, template=template, verbalizer=verb,
                          template_candidates=candidates)
    state = state.record("seed", seed).record("sizes", task.sizes())
    if mode != "head":  # the prompt as it stands; the prompt stage, when it runs, records its search
        state = state.record("prompt", {"scoring": scoring_name(ctx, mode), "template": template.source,
                                        "label_words": verb.to_json()})
    return state
