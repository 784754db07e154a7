"""Stage ``prompt``: label words (searched with the model, or near the rule words for similarity
scoring) and the template (candidates ranked by a short fine-tuning each, on dev); then, for
decoders with ``prompt.demonstrations``, the in-context demonstrations."""

from __future__ import annotations

from typing import Any

from autogpt_jax.evaluation import evaluate
from autogpt_jax.prompts.search import (paraphrase_templates, pick_demonstrations, rank_templates, search_label_words,
                                        search_label_words_similarity, written_templates)
from autogpt_jax.prompts.templates import Template, fill_task
from autogpt_jax.stages.context import RunContext, SeedState
from autogpt_jax.stages.finetune import train_classifier
from autogpt_jax.stages.task import scoring_name


def run(ctx: RunContext, state: SeedState) -> SeedState:
    if state.mode == "head":  # a classification head reads no prompt
        return state
    cfg, task, model, mode = ctx.cfg, state.task, state.model, state.mode
    verb, template, tok = state.verbalizer, state.template, ctx.tokenizer
    rep: dict[str, Any] = {"scoring": scoring_name(ctx, mode)}
    if cfg.prompt.label_words:
        source = "config"
    elif mode == "similarity":
        verb, rep["label_word_candidates"] = search_label_words_similarity(
            model, tok, task.train, task.names, template, verb, cfg.prompt, pooling=cfg.finetune.pooling,
            batch_size=cfg.eval.batch_size)
        source = "search near the rule words"
    elif not ctx.backbone.head_fresh:
        verb, rep["label_word_candidates"] = search_label_words(model, tok, task.train, len(task.names), template,
                                                                cfg.prompt)
        source = "search"
    else:
        source = "rules (the MLM head is untrained)"
    candidates = list(state.template_candidates[: cfg.prompt.candidates])
    if cfg.prompt.written:
        rep["written"] = [fill_task(t, verb, cfg.task.description) for t in written_templates(
            model, tok, task.train, [w[0] for w in verb.words], cfg.prompt.written, cfg.seed)]
        candidates += [t for t in rep["written"] if t not in candidates]
    if cfg.prompt.paraphrases:
        written = paraphrase_templates(model, tok, candidates, cfg.prompt.paraphrases, cfg.seed)
        rep["paraphrases"] = written
        candidates += written
    if len(candidates) > 1:
        def dev_score(t) -> dict:
            if cfg.prompt.search_steps == 0:  # zero-shot on dev
                res = evaluate(ctx.classifier(mode, model, task, t, verb), task.dev, cfg.eval.batch_size)
                return {"dev_accuracy": res["accuracy"], "dev_log_loss": res["log_loss"]}
            _, s_ = train_classifier(ctx, task, model, mode, t, verb, lr=cfg.finetune.lr_grid[0],
                                     steps=cfg.prompt.search_steps, stage="prompt-search", early_stop=False)
            return {"dev_accuracy": s_["best_dev_accuracy"], "dev_log_loss": s_["best_dev_log_loss"]}

        scored = rank_templates(candidates, dev_score)
        template = Template(scored[0]["template"])
        rep["template_candidates"] = scored
        rep["template_ranking"] = "zero-shot on dev" if cfg.prompt.search_steps == 0 else \
            f"{cfg.prompt.search_steps} fine-tuning steps, dev"
    rep.update(template=template.source, label_words=verb.to_json(), label_words_source=source)
    return state.record("prompt", rep, template=template, verbalizer=verb)


def add_demonstrations(ctx: RunContext, state: SeedState) -> SeedState:
    """``prompt.demonstrations`` training examples per class in the shared prefix (decoders)."""
    if state.mode == "head":
        return state
    demos = pick_demonstrations(state.task.train, state.verbalizer, ctx.cfg.prompt.demonstrations, state.seed,
                                state.model)
    template = state.template.with_demos(demos)
    return state.record("prompt", {**state.results["prompt"], "demonstrations": [list(d) for d in template.demos]},
                        template=template)
