"""Stage ``pretrain``: masked-LM (encoders) or causal-LM (decoders) on unlabelled text, from
scratch or continued; packed blocks, a held-out perplexity, checkpointed and resumable."""

from __future__ import annotations

from autogpt_jax.config import to_dict
from autogpt_jax.data import batching
from autogpt_jax.data.sources import load_unlabeled
from autogpt_jax.data.task import split_docs
from autogpt_jax.errors import ConfigError
from autogpt_jax.models.build import is_decoder, max_positions
from autogpt_jax.stages.context import RunContext, SeedState
from autogpt_jax.training import objectives
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.fit import fit

# What a pretraining checkpoint depends on (its fingerprint).
KEYS = ("seed", "model", "pretrain", "data.unlabeled", "data.unlabeled_file", "data.max_unlabeled",
        "data.eval_fraction", "data.split_seed")


def run(ctx: RunContext, state: SeedState) -> SeedState:
    cfg, pc = ctx.cfg, ctx.cfg.pretrain
    model, tok = state.model, ctx.tokenizer
    decoder = is_decoder(model)
    objective = pc.objective if pc.objective != "auto" else ("clm" if decoder else "mlm")
    if objective == "mlm" and decoder:
        raise ConfigError("pretrain.objective mlm needs an encoder (BERT family); decoders (GPT-2, Llama) train with clm")
    if objective == "clm" and not decoder:
        raise ConfigError("pretrain.objective clm needs a decoder (GPT-2 or Llama family); BERT trains with mlm")
    if pc.seq_len > max_positions(model):
        raise ConfigError(f"pretrain.seq_len {pc.seq_len} exceeds the model's {max_positions(model)} positions")

    texts = load_unlabeled(cfg.data.unlabeled, cfg.data.unlabeled_file, cfg.data.max_unlabeled)
    train_texts, eval_texts = split_docs(texts, cfg.data.eval_fraction, cfg.data.split_seed)
    if decoder:
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        kw = dict(style="gpt", bos_id=None, eos_id=eos, pad_id=tok.pad_token_id or 0)
    else:
        kw = dict(style="bert", bos_id=tok.cls_token_id, eos_id=tok.sep_token_id, pad_id=tok.pad_token_id or 0)
    packed = batching.pack(batching.tokenize(tok, train_texts), pc.seq_len, **kw)
    mk = dict(objective=objective, tokenizer=tok, mask_rate=pc.mask_rate, masking_mode=pc.masking)
    batches = batching.PretrainBatches(packed, pc.batch_size, cfg.seed, **mk)
    eval_batches = []
    if eval_texts and pc.eval_batches:
        packed_eval = batching.pack(batching.tokenize(tok, eval_texts), pc.seq_len, **kw)
        it = batching.PretrainBatches(packed_eval, pc.batch_size, cfg.seed + 1, shuffle=False, **mk)
        n_eval = min(pc.eval_batches, max(1, packed_eval.input_ids.shape[0] // pc.batch_size))
        eval_batches = [shd.put_batch(next(it), ctx.mesh) for _ in range(n_eval)]

    loss = objectives.mlm_loss if objective == "mlm" else objectives.clm_loss
    ck = ctx.checkpointing("pretrain", "pretrain", KEYS, state.fingerprints)
    res = fit(stage="pretrain", model=model, loss=loss, optim=pc.optim, steps=pc.steps, batches=batches,
              batch_size=pc.batch_size, batch_key="pretrain.batch_size", mesh=ctx.mesh, logger=ctx.logger,
              seed=cfg.seed, progress=cfg.logging.progress, log_every=pc.log_every, checkpoint=ck,
              held_out=eval_batches, held_out_key=objective, eval_every=pc.eval_every,
              early_stop_patience=pc.early_stop_patience, best_metric="eval_loss", best_mode="min",
              extra={"seed": cfg.seed, "config": to_dict(cfg)})
    summary = res.summary
    first = summary["evals"][0]["eval_loss"] if summary["evals"] and summary["evals"][0]["step"] == 0 else None
    rep = {"objective": objective, "documents": len(train_texts), "eval_documents": len(eval_texts),
           "blocks": int(packed.input_ids.shape[0]), "seq_len": pc.seq_len, "batch_size": pc.batch_size,
           "resumed_from_step": res.start_step or None, "stale_checkpoint": res.stale, "first_eval_loss": first,
           **summary}
    return state.record_run("pretrain", rep, model=res.model).fingerprinted("pretrain", ck.fingerprint)
