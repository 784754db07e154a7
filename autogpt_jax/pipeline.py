"""The stages, wired from the config: pretrain → (prompt → adapt → finetune → evaluate) → export.

Each stage reads what earlier ones left in the ``Run`` context and writes its results into
``report.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogpt_jax.config import Config, ConfigError, to_dict
from autogpt_jax.data import batching
from autogpt_jax.data.sources import load_unlabeled
from autogpt_jax.models import hf
from autogpt_jax.models.bert import Bert, BertConfig
from autogpt_jax.models.gpt2 import GPT2, GPT2Config
from autogpt_jax.training import objectives
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.checkpoint import StageCheckpointer
from autogpt_jax.training.loop import MetricsLogger, is_main, train_loop
from autogpt_jax.training.steps import Trainer

log = logging.getLogger(__name__)

BUILT_STAGES = ("pretrain", "export")


@dataclasses.dataclass
class Run:
    cfg: Config
    mesh: Any
    out: Path
    logger: MetricsLogger
    model: nnx.Module | None = None
    tokenizer: Any = None
    model_source: str = ""
    report: dict[str, Any] = dataclasses.field(default_factory=dict)

    def write_report(self):
        if is_main():
            (self.out / "report.json").write_text(json.dumps(self.report, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def _dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def param_count(model: nnx.Module) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def build_model(cfg: Config, mesh) -> tuple[nnx.Module, Any, str]:
    """Load (sharded, straight onto the mesh) or create from scratch; returns model, tokenizer, source."""
    m = cfg.model
    dtype = _dtype(m.dtype)
    if m.name_or_path:
        hf_cfg = hf.read_config(hf.resolve(m.name_or_path))
        overrides = {}
        if m.dropout is not None:
            keys = ("hidden_dropout", "attention_dropout") if hf_cfg.get("model_type") == "bert" else \
                ("resid_dropout", "embd_dropout", "attention_dropout")
            overrides = {k: m.dropout for k in keys}
        lm = hf.load_model(m.name_or_path, dtype=dtype, seed=cfg.seed, config_overrides=overrides,
                           shardings=lambda key, shape, var: shd.variable_sharding(var, mesh))
        tok = hf.load_tokenizer(hf.resolve(m.tokenizer)) if m.tokenizer else lm.tokenizer()
        return lm.model, tok, str(lm.path)
    tok = hf.load_tokenizer(hf.resolve(m.tokenizer))
    drop = 0.1 if m.dropout is None else m.dropout
    if m.arch == "bert":
        mcfg = BertConfig(vocab_size=len(tok), hidden_size=m.hidden_size, num_layers=m.num_layers,
                          num_heads=m.num_heads, intermediate_size=m.intermediate_size,
                          max_position_embeddings=m.max_positions, hidden_dropout=drop, attention_dropout=drop,
                          pad_token_id=tok.pad_token_id or 0)
        cls = Bert
    else:
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        mcfg = GPT2Config(vocab_size=len(tok), n_positions=m.max_positions, hidden_size=m.hidden_size,
                          num_layers=m.num_layers, num_heads=m.num_heads, intermediate_size=m.intermediate_size,
                          resid_dropout=drop, embd_dropout=drop, attention_dropout=drop,
                          bos_token_id=eos, eos_token_id=eos)
        cls = GPT2
    ctor = lambda: cls(mcfg, rngs=nnx.Rngs(cfg.seed), dtype=dtype)  # noqa: E731
    graphdef, abstract = nnx.split(nnx.eval_shape(ctor))
    shardings = shd.state_shardings(abstract, mesh)
    # Born sharded: the initialiser runs under jit with each parameter's sharding as its output.
    state = jax.jit(lambda: nnx.state(ctor()), out_shardings=shardings)()
    return nnx.merge(graphdef, state), tok, f"scratch:{m.arch}"


# --------------------------------------------------------------------------------------------
# pretrain
# --------------------------------------------------------------------------------------------


def _split_docs(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    order = np.random.default_rng([seed, 7]).permutation(len(texts))
    n_eval = int(round(len(texts) * fraction)) if len(texts) > 1 else 0
    eval_idx = set(order[:n_eval].tolist())
    return [t for i, t in enumerate(texts) if i not in eval_idx], [texts[i] for i in sorted(eval_idx)]


def run_pretrain(run: Run) -> None:
    cfg, pc = run.cfg, run.cfg.pretrain
    model, tok = run.model, run.tokenizer
    is_bert = isinstance(model, Bert)
    objective = pc.objective if pc.objective != "auto" else ("mlm" if is_bert else "clm")
    if objective == "mlm" and not is_bert:
        raise ConfigError("pretrain.objective mlm needs a BERT model; GPT-2 trains with clm")
    if objective == "clm" and is_bert:
        raise ConfigError("pretrain.objective clm needs a GPT-2 model; BERT trains with mlm")
    max_pos = model.config.max_position_embeddings if is_bert else model.config.n_positions
    if pc.seq_len > max_pos:
        raise ConfigError(f"pretrain.seq_len {pc.seq_len} exceeds the model's {max_pos} positions")
    if pc.batch_size % shd.batch_divisor(run.mesh):
        raise ConfigError(f"pretrain.batch_size {pc.batch_size} must be divisible by the data×fsdp mesh size "
                          f"{shd.batch_divisor(run.mesh)}")

    texts = load_unlabeled(cfg.data.unlabeled, cfg.data.unlabeled_file, cfg.data.max_unlabeled)
    train_texts, eval_texts = _split_docs(texts, cfg.data.eval_fraction, cfg.data.split_seed)
    style = "bert" if is_bert else "gpt"
    bos = tok.cls_token_id if is_bert else None
    eos = tok.sep_token_id if is_bert else (tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id)
    kw = dict(style=style, bos_id=bos, eos_id=eos, pad_id=tok.pad_token_id or 0)
    packed = batching.pack(batching.tokenize(tok, train_texts), pc.seq_len, **kw)
    mk = dict(objective=objective, tokenizer=tok, mask_rate=pc.mask_rate, masking_mode=pc.masking)
    batches = batching.PretrainBatches(packed, pc.batch_size, cfg.seed, **mk)
    eval_batches = []
    if eval_texts and pc.eval_batches:
        packed_eval = batching.pack(batching.tokenize(tok, eval_texts), pc.seq_len, **kw)
        it = batching.PretrainBatches(packed_eval, pc.batch_size, cfg.seed + 1, shuffle=False, **mk)
        n_eval = min(pc.eval_batches, max(1, packed_eval.input_ids.shape[0] // pc.batch_size))
        eval_batches = [shd.put_batch(next(it), run.mesh) for _ in range(n_eval)]

    loss_fn = objectives.mlm_loss if objective == "mlm" else objectives.clm_loss
    trainer, state = Trainer.create(model, loss_fn, pc.optim, pc.steps, run.mesh)
    ckpt = StageCheckpointer(run.out / "checkpoints" / "pretrain", cfg.checkpoint)
    rng = jax.random.key(cfg.seed)
    start = 0
    if cfg.checkpoint.resume:
        restored = ckpt.restore_latest(state)
        if restored is not None:
            state, extra, start = restored
            batches.restore(extra["data"])
            run.logger.truncate("pretrain", start)
            log.warning("pretrain: resumed from step %d (%s)", start, ckpt.directory)

    key = "mlm" if objective == "mlm" else "clm"

    def eval_fn(st):
        tot = cnt = 0.0
        for b in eval_batches:
            m = jax.device_get(trainer.eval_step(st, b))
            tot += float(m[f"{key}_loss_sum"])
            cnt += float(m[f"{key}_count"])
        loss = tot / max(cnt, 1.0)
        return {"eval_loss": loss, "eval_perplexity": float(np.exp(min(loss, 50.0)))}

    state, summary = train_loop(
        stage="pretrain", trainer=trainer, state=state, batches=batches, total_steps=pc.steps, rng=rng,
        logger=run.logger, ckpt=ckpt, save_every=cfg.checkpoint.every, log_every=pc.log_every,
        eval_fn=eval_fn if eval_batches else None, eval_every=pc.eval_every,
        early_stop_patience=pc.early_stop_patience, best_metric="eval_loss", best_mode="min",
        extra={"seed": cfg.seed, "config": to_dict(cfg)}, progress=cfg.logging.progress, start_step=start)
    ckpt.close()
    run.model = trainer.model(state)
    first = summary["evals"][0]["eval_loss"] if summary["evals"] and summary["evals"][0]["step"] == 0 else None
    run.report["pretrain"] = {
        "objective": objective, "documents": len(train_texts), "eval_documents": len(eval_texts),
        "blocks": int(packed.input_ids.shape[0]), "seq_len": pc.seq_len, "batch_size": pc.batch_size,
        "resumed_from_step": start or None, "first_eval_loss": first, **summary,
    }


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


def run_export(run: Run) -> None:
    out = run.out / "export"
    hf.save_pretrained(run.model, out, tokenizer=run.tokenizer)  # collective: every process gathers
    if is_main():
        meta = {"autogpt_jax_version": __import__("autogpt_jax").__version__, "source_model": run.model_source,
                "architecture": hf.default_architecture(run.model), "task": None}
        (out / "autogpt_jax.json").write_text(json.dumps(meta, indent=2) + "\n")
    run.report["export"] = {"dir": str(out)}


STAGE_FUNCS = {"pretrain": run_pretrain, "export": run_export}


def run_pipeline(cfg: Config) -> dict[str, Any]:
    not_built = [s for s in cfg.stage_list if s not in BUILT_STAGES]
    if not_built:
        raise ConfigError(f"stage(s) {not_built} are not built yet; available stages: {','.join(BUILT_STAGES)} "
                          "(for example --stages pretrain,export)")
    shd.init_distributed(cfg.mesh)
    mesh = shd.make_mesh(cfg.mesh)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    logger = MetricsLogger(out, cfg.logging, to_dict(cfg))
    t0 = time.perf_counter()
    run = Run(cfg, mesh, out, logger)
    run.model, run.tokenizer, run.model_source = build_model(cfg, mesh)
    run.report = {
        "model": run.model_source, "parameters": param_count(run.model), "stages": list(cfg.stage_list),
        "devices": {"count": jax.device_count(), "processes": jax.process_count(),
                    "platform": jax.devices()[0].platform, "mesh": dict(mesh.shape)},
        "config": to_dict(cfg),
    }
    try:
        for stage in cfg.stage_list:
            STAGE_FUNCS[stage](run)
            run.report["wall_time_s"] = round(time.perf_counter() - t0, 2)
            run.write_report()
    finally:
        logger.close()
    return run.report
