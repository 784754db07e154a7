"""The per-seed setup before the task stages: the K-shot split, the classifier mode, and the rule
prompt (template candidates and label words) that the prompt stage may replace."""

from __future__ import annotations

from autogpt_jax.data.task import prepare_task
from autogpt_jax.errors import ConfigError
from autogpt_jax.prompts.search import parse_label_words
from autogpt_jax.prompts.templates import Template, fill_task, rule_prompts
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


def label_word_sets(ctx: RunContext, mode: str) -> int:
    """How many label-word sets an ensemble draws on: the configured ones, or the searched and the
    rule words (when the prompt stage searches)."""
    searched = "prompt" in ctx.cfg.stage_list and not ctx.cfg.prompt.label_words and (
        mode == "similarity" or not ctx.backbone.head_fresh)
    return 2 if searched else 1


def check_levers(ctx: RunContext, task, mode: str, n_templates: int):
    """The ensemble and self-training settings that cannot work, before anything trains."""
    pc = ctx.cfg.prompt
    if pc.written and ctx.kind != "decoder":
        raise ConfigError("prompt.written: the instructions are written by a decoder (GPT-2 or Llama family); "
                          "set prompt.written 0 for an encoder")
    if pc.paraphrases and ctx.kind != "decoder":
        raise ConfigError("prompt.paraphrases: the paraphrases are written by a decoder (GPT-2 or Llama family); "
                          "set prompt.paraphrases 0 for an encoder")
    if pc.ensemble > 1:
        if mode == "head":
            raise ConfigError("prompt.ensemble combines prompts; finetune.mode head reads none. Use finetune.mode "
                              "prompt or prompt.ensemble 1")
        n = (n_templates * (1 + pc.paraphrases) + pc.written) * label_word_sets(ctx, mode) * pc.ensemble_seeds
        if pc.ensemble > n:
            raise ConfigError(f"prompt.ensemble {pc.ensemble} is larger than its {n} candidates ({n_templates} "
                              f"template(s) × {1 + pc.paraphrases} with paraphrases × {label_word_sets(ctx, mode)} "
                              f"label-word set(s) × {pc.ensemble_seeds} seed(s)); lower prompt.ensemble or raise "
                              "prompt.ensemble_seeds / prompt.candidates")
    pool_calibration = pc.calibrate == "pool" and "finetune" in ctx.cfg.stage_list
    if "selftrain" in ctx.cfg.stage_list or "distill" in ctx.cfg.stage_list or pool_calibration:
        if not task.pool:
            which = next(f"the {s} stage" for s in ("selftrain", "distill") if s in ctx.cfg.stage_list) \
                if not pool_calibration else "prompt.calibrate pool"
            raise ConfigError(f"{which} labels unlabelled task text, and this task has none (after the "
                              "test, train and dev texts are taken out); pass --data.unlabeled_file FILE (a `text` "
                              "column) or --data.unlabeled NAME")


def check_description(ctx: RunContext):
    """``task.description`` must leave room for the text in the prompt (before anything trains)."""
    desc, max_len = ctx.cfg.task.description, ctx.cfg.prompt.max_length
    if not desc:
        return
    n = len(ctx.tokenizer(desc, add_special_tokens=False)["input_ids"])
    model = ctx.backbone.model
    context = getattr(model, "max_positions", None)
    if n >= max_len // 2:
        raise ConfigError(f"task.description is {n} tokens long; a prompt holds prompt.max_length={max_len} tokens "
                          f"(the model's context: {context or 'unknown'}) and the text needs room: describe the task "
                          "in one short sentence")


def run(ctx: RunContext, state: SeedState) -> SeedState:
    cfg, seed = ctx.cfg, state.seed
    task = prepare_task(cfg, seed, ctx.out / "splits" / f"seed-{seed}" if is_main() else None)
    pmode = prompt_mode(ctx)
    mode = pmode if cfg.finetune.mode == "prompt" else "head"
    decoder = ctx.kind == "decoder"
    if cfg.finetune.mode in ("probe", "setfit") and decoder:
        raise ConfigError(f"finetune.mode {cfg.finetune.mode} fits a head on a sentence encoder's embeddings; "
                          f"{ctx.backbone.source} is a decoder: use finetune.mode prompt")
    if cfg.finetune.mode == "auto":
        mode = pmode  # the prompt is searched; fine-tuning screens it against the embedding head
    check_description(ctx)
    chat = decoder and bool(getattr(ctx.tokenizer, "chat_template", None))
    rule_templates, rule_verb = rule_prompts(cfg.prompt.task_type, task.names, decoder=decoder, chat=chat,
                                             description=cfg.task.description)
    verb = parse_label_words(cfg.prompt.label_words, task.names) or rule_verb
    candidates = tuple([fill_task(cfg.prompt.template, verb, cfg.task.description)] if cfg.prompt.template
                       else rule_templates)
    n_templates = min(len(candidates), cfg.prompt.candidates) if "prompt" in cfg.stage_list else 1
    check_levers(ctx, task, mode, n_templates)
    template = Template(candidates[0])
    state = state.replace(task=task, mode=mode, prompt_mode=pmode, template=template, verbalizer=verb,
                          template_candidates=candidates, rule_verbalizer=rule_verb)
    state = state.record("seed", seed).record("sizes", task.sizes()).record("classes", list(task.names))
    if mode != "head":  # the prompt as it stands; the prompt stage, when it runs, records its search
        state = state.record("prompt", {"scoring": scoring_name(ctx, mode), "template": template.source,
                                        "label_words": verb.to_json()})
    return state
