"""Stage ``retrieval`` (run once, not per seed): contrastive (InfoNCE) fine-tuning of a
bi-encoder on question/answer pairs, measured on the held-out questions before and after; the
retriever is exported to export/retriever."""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

from autogpt_jax.data import batching
from autogpt_jax.errors import RetrievalError
from autogpt_jax.models import hf
from autogpt_jax.models.build import kind
from autogpt_jax.retrieval.answers import build_answers, fill_placeholders, pair_data
from autogpt_jax.retrieval.encoder import PairBatches, infonce_loss
from autogpt_jax.retrieval.retriever import Retriever
from autogpt_jax.stages.context import RunContext, SeedState
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.fit import fit


def train_retriever(ctx: RunContext) -> tuple[Retriever, dict[str, Any]]:
    cfg, rc = ctx.cfg, ctx.cfg.retrieval
    train, held = pair_data(rc.dataset)
    answers = build_answers(train, rc.answers_per_intent, rc.company, seed=cfg.data.split_seed)
    name = rc.model or cfg.model.name_or_path
    if not name:
        raise RetrievalError("retrieval.model is empty and so is model.name_or_path: name a BERT-family encoder")
    lm = hf.load_model(name, seed=cfg.seed, shardings=lambda key, shape, var: shd.variable_sharding(var, ctx.mesh))
    if kind(lm.model) != "encoder":
        raise RetrievalError(f"retrieval.model {name!r} is not a BERT-family encoder (the bi-encoder needs one)")
    model, tok = lm.model, lm.tokenizer()
    hq, hi = list(held["question"]), list(held["intent"])
    rep: dict[str, Any] = {"model": str(lm.path), "answers": len(answers), "intents": len({a.intent for a in answers}),
                           "train_pairs": len(train), "held_out_questions": len(hq), "temperature": rc.temperature}
    t0 = time.perf_counter()
    before = Retriever(model, tok, answers, rc.question_max_length, rc.answer_max_length)
    rep["index_build_s"] = round(time.perf_counter() - t0, 2)
    rep["before"] = before.evaluate(hq, hi)
    if rc.steps > 0:
        groups = {g: i for i, g in enumerate(sorted(set(train["intent"])))}
        q_seqs = batching.encode(tok, list(train["question"]), rc.question_max_length)
        a_seqs = batching.encode(tok, [fill_placeholders(a, rc.company) for a in train["answer"]], rc.answer_max_length)
        batches = PairBatches(q_seqs, a_seqs, np.asarray([groups[g] for g in train["intent"]]), rc.batch_size,
                              cfg.seed, tok.pad_token_id or 0)
        loss = functools.partial(infonce_loss, temperature=rc.temperature, mask_same_group=rc.mask_same_intent)
        res = fit(stage="retrieval", model=model, loss=loss, optim=rc.optim, steps=rc.steps, batches=batches,
                  batch_size=rc.batch_size, batch_key="retrieval.batch_size", mesh=ctx.mesh, logger=ctx.logger,
                  seed=cfg.seed, progress=cfg.logging.progress, log_every=max(1, rc.steps // 10), tokens_key="q_mask")
        model = res.model
        rep["train"] = {"steps": rc.steps, "batch_size": rc.batch_size, "final_loss": res.summary["final_loss"],
                        "wall_time_s": res.summary["wall_time_s"]}
    after = Retriever(model, tok, answers, rc.question_max_length, rc.answer_max_length)
    rep["after"] = after.evaluate(hq, hi)
    return after, rep


def run(ctx: RunContext, state: SeedState) -> SeedState:
    retriever, rep = train_retriever(ctx)
    return state.record_run("retrieval", rep, retriever=retriever)
