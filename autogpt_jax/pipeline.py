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

from autogpt_jax import handover
from autogpt_jax.config import Config, ConfigError, OptimConfig, to_dict
from autogpt_jax.data import batching, fewshot, masking, sources
from autogpt_jax.data.sources import load_unlabeled
from autogpt_jax.inference import Classifier, accuracy_f1, prompt_inputs, word_table
from autogpt_jax.prompts.templates import Template, Verbalizer, rule_prompts
from autogpt_jax.models import hf
from autogpt_jax.models import peft as peft_lib
from autogpt_jax.models.bert import Bert, BertConfig
from autogpt_jax.models.gpt2 import GPT2, GPT2Config
from autogpt_jax.training import objectives
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.checkpoint import StageCheckpointer
from autogpt_jax.training.loop import MetricsLogger, is_main, train_loop
from autogpt_jax.training.steps import Trainer

log = logging.getLogger(__name__)

BUILT_STAGES = ("pretrain", "prompt", "adapt", "finetune", "evaluate", "distill", "retrieval", "export")
TASK_STAGES = ("prompt", "adapt", "finetune", "evaluate", "distill")


@dataclasses.dataclass
class Run:
    cfg: Config
    mesh: Any
    out: Path
    logger: MetricsLogger
    model: nnx.Module | None = None
    tokenizer: Any = None
    model_source: str = ""
    fresh: list[str] = dataclasses.field(default_factory=list)
    classifier: Classifier | None = None
    student: Classifier | None = None  # the distill stage's student (head mode), exported to export/student
    handover: handover.Handover | None = None  # fitted by the evaluate stage when handover.enabled
    retriever: Any = None  # the retrieval stage's retrieval.Retriever, exported to export/retriever
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    # (split seed, learning rate) -> (model, summary) of a fine-tuning already done on the same
    # split from the same base model with the same recipe (backbone selection's screen)
    reuse: dict[tuple[int, float], tuple[Any, dict]] = dataclasses.field(default_factory=dict)

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


def build_model(cfg: Config, mesh, num_labels: int = 0) -> tuple[nnx.Module, Any, str, list[str]]:
    """Load (sharded, straight onto the mesh) or create from scratch; returns model, tokenizer, source."""
    m = cfg.model
    dtype = _dtype(m.dtype)
    if m.name_or_path:
        hf_cfg = hf.read_config(hf.resolve(m.name_or_path))
        overrides = {}
        if m.dropout is not None:
            keys = {"bert": ("hidden_dropout", "attention_dropout"),
                    "gpt2": ("resid_dropout", "embd_dropout", "attention_dropout")}.get(hf_cfg.get("model_type"),
                                                                                     ("attention_dropout",))
            overrides = {k: m.dropout for k in keys}
        lm = hf.load_model(m.name_or_path, dtype=dtype, seed=cfg.seed, config_overrides=overrides,
                           num_labels=num_labels, shardings=lambda key, shape, var: shd.variable_sharding(var, mesh))
        tok = hf.load_tokenizer(hf.resolve(m.tokenizer)) if m.tokenizer else lm.tokenizer()
        return lm.model, tok, str(lm.path), lm.fresh
    tok = hf.load_tokenizer(hf.resolve(m.tokenizer))
    drop = 0.1 if m.dropout is None else m.dropout
    if m.arch == "bert":
        mcfg = BertConfig(vocab_size=len(tok), hidden_size=m.hidden_size, num_layers=m.num_layers,
                          num_heads=m.num_heads, intermediate_size=m.intermediate_size,
                          max_position_embeddings=m.max_positions, hidden_dropout=drop, attention_dropout=drop,
                          pad_token_id=tok.pad_token_id or 0, num_labels=num_labels)
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
    return nnx.merge(graphdef, state), tok, f"scratch:{m.arch}", ["*"]


# --------------------------------------------------------------------------------------------
# pretrain
# --------------------------------------------------------------------------------------------


def _resume(run: Run, stage: str, ckpt: StageCheckpointer, state, batches) -> tuple[Any, int]:
    """With --checkpoint.resume: the newest readable checkpoint's state and data position, and
    metrics.jsonl cut back to that step. Otherwise (or with nothing saved) the fresh state."""
    if not run.cfg.checkpoint.resume:
        return state, 0
    restored = ckpt.restore_latest(state)
    if restored is None:
        return state, 0
    state, extra, start = restored
    batches.restore(extra["data"])
    run.logger.truncate(stage, start)
    log.warning("%s: resumed from step %d (%s)", stage, start, ckpt.directory)
    return state, start


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
    state, start = _resume(run, "pretrain", ckpt, state, batches)

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
# few-shot task stages: prompt → adapt → finetune → evaluate, per split seed
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Task:
    names: list[str]
    train: Any  # datasets.Dataset (K per class)
    dev: Any
    test: Any
    unlabeled: list[str]
    seed: int


def prepare_task(run: Run, seed: int) -> Task:
    cfg, d = run.cfg, run.cfg.data
    if d.train_file:
        ds = sources.load_files(d.train_file, d.dev_file, d.test_file)
    elif d.dataset:
        ds = sources.load_dataset(d.dataset)
    else:
        raise ConfigError(f"no labelled data: set --data.dataset (one of {sorted(sources.DATASETS)}) "
                          "or --data.train_file FILE")
    if "test" not in ds:
        raise ConfigError("the task has no test split: pass --data.test_file")
    pool = ds["train"]
    names = list(pool.features["label"].names)
    if d.dev_file:
        train, _ = fewshot.fewshot_split(pool, d.k_shot, seed, dev=False)
        dev = ds["validation"]
    else:
        train, dev = fewshot.fewshot_split(pool, d.k_shot, seed)
    if is_main():
        split_dir = run.out / "splits" / f"seed-{seed}"
        fewshot.write_split(split_dir, "train", train)
        fewshot.write_split(split_dir, "dev", dev)
    if d.unlabeled or d.unlabeled_file:
        unlabeled = load_unlabeled(d.unlabeled, d.unlabeled_file)
    else:  # the rest of the labelled pool, labels dropped (never the test split)
        unlabeled = list(pool["text"])
    cap = run.cfg.adapt.max_unlabeled
    if len(unlabeled) > cap:
        keep = np.sort(np.random.default_rng([seed, 3]).permutation(len(unlabeled))[:cap])
        unlabeled = [unlabeled[i] for i in keep]
    return Task(names, train, dev, fewshot.fixed_subset(ds["test"], d.max_test), unlabeled, seed)


def parse_label_words(spec: str | None, names: list[str]) -> Verbalizer | None:
    if not spec:
        return None
    classes = [tuple(w.strip() for w in c.split(",") if w.strip()) for c in spec.split("|")]
    if len(classes) != len(names) or not all(classes):
        raise ConfigError(f"prompt.label_words {spec!r} gives {len(classes)} classes; the task has {len(names)} "
                          f"({names}). Separate classes with '|' and alternatives with ','")
    return Verbalizer(tuple(classes))


def _classifier(run: Run, model, task: Task, mode: str, template: Template | None, verb: Verbalizer | None,
                labels: list[str] | None = None):
    ids = wts = desc = None
    if mode == "prompt":
        ids, wts = word_table(run.tokenizer, model, verb, template)
    elif mode == "similarity":
        desc = verb.description_table(run.tokenizer, template)
    return Classifier(model, run.tokenizer, labels or task.names, mode, template, ids, wts,
                      max_length=run.cfg.prompt.max_length, pooling=run.cfg.finetune.pooling,
                      label_words=verb.to_json() if verb is not None else None, descriptions=desc,
                      scale=run.cfg.prompt.similarity_scale)


def prompt_mode(run: Run) -> str:
    """The classifier a prompt becomes: ``prompt`` (cloze at the mask) or ``similarity``."""
    scoring = run.cfg.prompt.scoring
    if scoring == "auto":
        no_head = any(p.startswith("mlm.") for p in run.fresh)
        scoring = "similarity" if isinstance(run.model, Bert) and no_head else "cloze"
    if scoring == "similarity" and not isinstance(run.model, Bert):
        raise ConfigError("prompt.scoring similarity needs a BERT-family sentence encoder; use cloze for GPT-2")
    return "similarity" if scoring == "similarity" else "prompt"


def _scoring_name(model, mode: str) -> str:
    if mode == "similarity":
        return "similarity"
    return "next_token" if objectives.is_decoder(model) else "cloze"


def _evaluate(clf: Classifier, ds, batch_size: int, logits: np.ndarray | None = None) -> dict[str, Any]:
    gold = np.asarray(ds["label"])
    logits = clf.logits(list(ds["text"]), batch_size) if logits is None else logits
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
    log_loss = float(-logp[np.arange(len(gold)), gold].mean()) if len(gold) else 0.0
    return {**accuracy_f1(logits.argmax(-1), gold, len(clf.labels)), "log_loss": log_loss}


def search_label_words(run: Run, model, task: Task, template: Template) -> tuple[Verbalizer, list[dict]]:
    """Top-k vocabulary words per class by mean mask-position probability on that class's training
    examples; combinations scored by zero-shot accuracy on train (per-class greedy when there are
    too many combinations)."""
    tok, k = run.tokenizer, run.cfg.prompt.top_k_words
    vocab = tok.get_vocab()
    decoder = objectives.is_decoder(model)
    if decoder:  # next-token candidates: whole words, spaced as the template puts them (" great")
        space = template.space_before_mask

        def as_word(t: str) -> str | None:
            w = tok.convert_tokens_to_string([t])
            return w.strip() if w.startswith(" ") == space and w.strip().isalpha() and len(w.strip()) > 2 else None
    else:
        def as_word(t: str) -> str | None:
            return t if t.isalpha() and len(t) > 2 and not t.startswith("##") else None
    word_of = {i: w for t, i in vocab.items() if (w := as_word(t)) is not None}
    ok_ids = np.asarray(sorted(word_of))
    ids_VxW = ok_ids[:, None]
    clf = Classifier(model, tok, [str(i) for i in ok_ids], "prompt", template, ids_VxW,
                     np.ones_like(ids_VxW, np.float32), max_length=run.cfg.prompt.max_length)
    texts, labels = list(task.train["text"]), np.asarray(task.train["label"])
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(clf.logits(texts)), axis=-1))  # N × V'
    C = len(task.names)
    mean_c = np.stack([np.exp(logp[labels == c]).mean(0) for c in range(C)])
    # Favour words that are likely for this class *and* unlikely for the others.
    score = np.log(mean_c + 1e-12) - np.log(mean_c.mean(0, keepdims=True) + 1e-12) + np.log(mean_c + 1e-12)
    top = [np.argsort(-score[c])[:k] for c in range(C)]
    combos = np.prod([len(t) for t in top])
    cands = []
    if combos <= 4096:
        import itertools

        for combo in itertools.product(*top):
            if len(set(combo)) < C:
                continue
            acc = float((logp[:, list(combo)].argmax(-1) == labels).mean())
            cands.append((acc, combo))
    else:
        combo = tuple(int(t[0]) for t in top)
        cands.append((float((logp[:, list(combo)].argmax(-1) == labels).mean()), combo))
    cands.sort(key=lambda x: -x[0])
    words = lambda combo: [word_of[int(ok_ids[j])] for j in combo]  # noqa: E731
    best = cands[0][1]
    return Verbalizer(tuple((w,) for w in words(best))), [{"label_words": words(c), "train_zero_shot_accuracy": a}
                                                             for a, c in cands[:5]]


def search_label_words_similarity(run: Run, model, task: Task, template: Template, base: Verbalizer,
                                  picks: int = 2) -> tuple[Verbalizer, list[dict]]:
    """Label-word search for similarity scoring. Unconstrained, 32 examples pick words that fit
    them by accident ("ryder" vs "greeting"); so the candidates of a class are the 2·top_k
    vocabulary words nearest its rule word in the model's token-embedding space, ranked by how
    much closer the class's training examples are to the word's description ("It was awful.")
    than the other classes' examples are. The best ``picks`` join the rule words, and the larger
    verbalizer is kept only if its zero-shot accuracy on train is at least the rule words'."""
    tok, n_near = run.tokenizer, 2 * run.cfg.prompt.top_k_words
    vocab = tok.get_vocab()
    ok_ids = np.asarray(sorted(i for t, i in vocab.items() if t.isalpha() and len(t) > 2 and not t.startswith("##")))
    word = np.asarray(jax.device_get(model.word_embeddings()), np.float32)  # fetched once, V × D
    E = word[ok_ids]
    E /= np.maximum(np.linalg.norm(E, axis=-1, keepdims=True), 1e-9)
    taken = {w for ws in base.words for w in ws}
    near: list[list[str]] = []
    for words in base.words:
        pieces = [i for w in words for i in tok(w, add_special_tokens=False)["input_ids"]]
        anchor = word[pieces].mean(0)
        order = np.argsort(-(E @ (anchor / max(np.linalg.norm(anchor), 1e-9))))
        near.append([w for w in tok.convert_ids_to_tokens(ok_ids[order[: n_near + len(taken)]].tolist())
                     if w not in taken][:n_near])
    flat = [w for ws in near for w in ws]
    probe = _classifier(run, model, task, "similarity", template, Verbalizer(tuple((w,) for w in flat)), labels=flat)
    texts, labels = list(task.train["text"]), np.asarray(task.train["label"])
    sims = probe.logits(texts) / run.cfg.prompt.similarity_scale  # N × (all candidate words)
    C = len(base.words)
    mean_c = np.stack([sims[labels == c].mean(0) for c in range(C)])
    margin = mean_c - mean_c.mean(0, keepdims=True)
    words, cands, start = [], [], 0
    for c in range(C):
        idx = np.arange(start, start + len(near[c]))
        start += len(near[c])
        ranked = idx[np.argsort(-margin[c, idx])]
        words.append(base.words[c] + tuple(flat[j] for j in ranked[:picks]))
        cands.append({"class": task.names[c], "candidates": [{"word": flat[j], "margin": float(margin[c, j])}
                                                              for j in ranked[: run.cfg.prompt.top_k_words]]})
    grown = Verbalizer(tuple(words))

    def train_acc(v):
        return _evaluate(_classifier(run, model, task, "similarity", template, v), task.train,
                         run.cfg.eval.batch_size)["accuracy"]

    acc_base, acc_grown = train_acc(base), train_acc(grown)
    chosen = grown if acc_grown >= acc_base else base
    return chosen, [{"label_words": grown.to_json(), "train_zero_shot_accuracy": acc_grown},
                    {"label_words": base.to_json(), "train_zero_shot_accuracy": acc_base}, *cands]


def with_peft(run: Run, model, loss, steps: int, head_paths: tuple[str, ...]) -> tuple[Any, dict]:
    """The model to train and the trainer arguments: with ``--peft.method``, a copy of ``model``
    with the method's parameters attached (unless it already carries them, as after a PEFT adapt
    stage), trained alone plus the head; full fine-tuning otherwise."""
    pc = run.cfg.peft
    if pc.method == "none":
        return model, {"loss": loss}
    if not peft_lib.has_peft(model):
        model = nnx.clone(model)
        peft_lib.apply(model, pc, seed=run.cfg.seed)
    kw: dict[str, Any] = {"loss": loss, "trainable": peft_lib.trainable_filter(pc, head_paths=head_paths),
                          "frozen_dtype": _dtype(pc.frozen_dtype) if pc.frozen_dtype != "float32" else None}
    if pc.method == "adalora":
        kw["loss"] = peft_lib.with_orthogonality(loss, pc.orth_reg)
        kw["hook"] = peft_lib.adalora_update(pc, steps)
    return model, kw


def example_batches(run: Run, model, seqs: list[np.ndarray], fields: dict[str, np.ndarray], batch_size: int, seed: int,
                    label_ids: np.ndarray | None = None):
    """Fine-tuning batches: decoder prompts with single-token label words packed into rows
    (``finetune.pack``), everything else padded to a length bucket."""
    pad = run.tokenizer.pad_token_id or 0
    if (run.cfg.finetune.pack and label_ids is not None and objectives.is_decoder(model)
            and label_ids.shape[-1] == 1):
        row_len = max(128, batching.bucket_length(max(len(s_) for s_ in seqs)))
        return batching.PackedExampleBatches(seqs, fields, batch_size, seed, pad_id=pad, row_len=row_len,
                                             row_multiple=shd.batch_divisor(run.mesh))
    return batching.ExampleBatches(seqs, fields, batch_size, seed, pad_id=pad)


def _train_cls(run: Run, task: Task, model, mode: str, template: Template | None, verb: Verbalizer | None, *,
               lr: float, steps: int, stage: str, mlm_weight: float = 0.0, early_stop: bool = True):
    """Fine-tune on the K-shot train split; returns the model at its best dev accuracy and a summary."""
    cfg, fc, tok = run.cfg, run.cfg.finetune, run.tokenizer
    texts, labels = list(task.train["text"]), np.asarray(task.train["label"], np.int32)
    if mode == "prompt":
        ids, wts = word_table(tok, model, verb, template)
        # Decoders: the shared prompt prefix is split off and runs once per batch.
        seqs, mpos, prefix = prompt_inputs(tok, model, template, texts, cfg.prompt.max_length)
        loss = objectives.make_cloze_loss(ids, wts, prefix)
        fields = {"mask_pos": mpos, "labels": labels}
    elif mode == "similarity":
        loss = objectives.make_similarity_loss(*verb.description_table(tok, template), cfg.prompt.similarity_scale)
        seqs = batching.encode(tok, texts, cfg.prompt.max_length)
        fields = {"labels": labels}
    else:
        if getattr(model, "classifier", None) is None:
            raise ConfigError("finetune.mode head needs a classification head; the model was built without one")
        loss = lambda m, b, r=None: objectives.classification_loss(m, b, r, pooling=fc.pooling)  # noqa: E731
        seqs = batching.encode(tok, texts, cfg.prompt.max_length)
        fields = {"labels": labels}
    bs = fc.batch_size
    if bs % shd.batch_divisor(run.mesh):
        raise ConfigError(f"finetune.batch_size {bs} must be divisible by the data×fsdp mesh size {shd.batch_divisor(run.mesh)}")
    batches = example_batches(run, model, seqs, fields, bs, task.seed, ids if mode == "prompt" else None)
    if mlm_weight > 0:
        lm_loss = objectives.clm_loss if objectives.is_decoder(model) else objectives.mlm_loss
        loss = objectives.joint_loss(loss, lm_loss, mlm_weight)
        batches = JointBatches(batches, _adapt_batches(run, task, model, template, verb, bs, mlm_only=True))
    optim = dataclasses.replace(fc.optim, learning_rate=lr)
    model, peft_kw = with_peft(run, model, loss, steps, head_paths=("classifier",) if mode == "head" else ())
    trainer, state = Trainer.create(model, peft_kw.pop("loss"), optim, steps, run.mesh, fgm_epsilon=fc.fgm_epsilon,
                                    **peft_kw)
    best: dict[str, Any] = {"acc": -1.0, "params": None, "frozen": None, "step": 0}

    def eval_fn(st):
        m = trainer.model(st)
        res = _evaluate(_classifier(run, m, task, mode, template, verb), task.dev, cfg.eval.batch_size)
        acc = res["accuracy"]
        # The untrained model (step 0) is not a candidate, and ties go to the later step: with K-shot
        # dev sets, accuracy moves in steps of 1/|dev| and early ties are common.
        if int(st.step) > 0 and acc >= best["acc"]:
            best.update(acc=acc, log_loss=res["log_loss"], params=jax.tree.map(lambda x: x.copy(), st.params),
                        frozen=jax.tree.map(lambda x: x.copy(), st.frozen) if trainer.hook else None, step=int(st.step))
        return {"dev_accuracy": acc}

    state, summary = train_loop(
        stage=stage, trainer=trainer, state=state, batches=batches, total_steps=steps, rng=jax.random.key(cfg.seed),
        logger=run.logger, ckpt=None, log_every=max(1, steps // 10), eval_fn=eval_fn, eval_every=fc.eval_every,
        early_stop_patience=fc.early_stop_patience if early_stop else 0, best_metric="dev_accuracy", best_mode="max",
        progress=cfg.logging.progress)
    model = nnx.merge(trainer.graphdef, best["params"], best["frozen"] or state.frozen)
    return model, {"learning_rate": lr, "best_dev_accuracy": best["acc"], "best_dev_log_loss": best.get("log_loss"),
                   "best_step": best["step"],
                   "trainable_parameters": int(sum(x.size for x in jax.tree.leaves(state.params))),
                   "steps_run": summary["steps"], "wall_time_s": summary["wall_time_s"],
                   "tokens_per_s": summary["tokens_per_s"], "stopped_early": summary["stopped_early"]}


class JointBatches:
    """Task batches with an MLM batch on unlabelled task text alongside (keys prefixed ``mlm/``)."""

    def __init__(self, task_batches, mlm_batches):
        self.task, self.mlm = task_batches, mlm_batches

    def __iter__(self):
        return self

    def __next__(self):
        return {**next(self.task), **{f"mlm/{k}": v for k, v in next(self.mlm).items()}}

    def state(self):
        return {"task": self.task.state(), "mlm": self.mlm.state()}

    def restore(self, st):
        self.task.restore(st["task"])
        self.mlm.restore(st["mlm"])


def _adapt_batches(run: Run, task: Task, model, template: Template, verb: Verbalizer, batch_size: int, *,
                   mlm_only: bool = False) -> batching.PretrainBatches:
    """Unlabelled task text plus the training sentences prompted with their label word; tokens of
    the label words are favoured by prompt-aware masking (encoders). Decoders get the same text
    for causal-LM training, each prompt followed by its label word."""
    ac, tok = run.cfg.adapt, run.tokenizer
    L = ac.seq_len
    decoder = objectives.is_decoder(model)
    seqs = batching.encode(tok, task.unlabeled, L)
    ids_CxW, _ = word_table(tok, model, verb, template)
    word_ids = np.unique(ids_CxW[ids_CxW > 0])
    train_texts, train_labels = list(task.train["text"]), np.asarray(task.train["label"])
    p_seqs, mpos = template.encode(tok, train_texts, L - ids_CxW.shape[-1] if decoder else L, causal=decoder)
    if decoder:  # ids C×W×T: the prompt continues with every token of the class's first word
        p_seqs = [np.append(s_, ids_CxW[y, 0][ids_CxW[y, 0] >= 0]).astype(np.int32) for s_, y in zip(p_seqs, train_labels)]
    else:
        for s_, m_, y in zip(p_seqs, mpos, train_labels):
            s_[m_] = ids_CxW[y, 0]  # the true label word in the mask slot
    # The K-shot sentences are few: repeat them so they make up about a fifth of the adaptation data.
    reps = max(1, len(seqs) // (4 * max(len(p_seqs), 1)))
    all_seqs = seqs + p_seqs * reps
    ids, mask = batching.pad_batch(all_seqs, tok.pad_token_id or 0, buckets=(L,))
    if decoder:
        return batching.PretrainBatches(batching.Packed(ids, mask, mask == 1, None), batch_size,
                                        task.seed + (17 if mlm_only else 0), objective="clm")
    special = np.isin(ids, np.asarray(tok.all_special_ids))
    maskable = (mask == 1) & ~special
    boost = np.isin(ids, word_ids) & maskable if ac.masking == "prompt_aware" else None
    packed = batching.Packed(ids, mask, maskable, boost)
    mode = "whole_word" if ac.masking in ("prompt_aware", "whole_word") else "random"
    return batching.PretrainBatches(packed, batch_size, task.seed + (17 if mlm_only else 0), objective="mlm",
                                    tokenizer=tok, mask_rate=ac.mask_rate, masking_mode=mode,
                                    boost_rate=ac.label_word_rate)


def adapt(run: Run, task: Task, model, template: Template, verb: Verbalizer) -> tuple[nnx.Module, dict]:
    """Adaptive training on the task's unlabelled text and prompted training sentences: masked-LM
    for encoders, causal-LM for decoders."""
    ac, cfg = run.cfg.adapt, run.cfg
    batches = _adapt_batches(run, task, model, template, verb, ac.batch_size)
    if ac.batch_size % shd.batch_divisor(run.mesh):
        raise ConfigError(f"adapt.batch_size {ac.batch_size} must be divisible by the data×fsdp mesh size")
    decoder = objectives.is_decoder(model)
    # With PEFT, the fresh MLM head (MiniLM ships none) trains beside the method's parameters.
    model, peft_kw = with_peft(run, model, objectives.clm_loss if decoder else objectives.mlm_loss, ac.steps,
                               head_paths=() if decoder else ("mlm",))
    trainer, state = Trainer.create(model, peft_kw.pop("loss"), ac.optim, ac.steps, run.mesh, **peft_kw)
    ckpt = StageCheckpointer(run.out / "checkpoints" / f"adapt-seed{task.seed}", cfg.checkpoint)
    state, start = _resume(run, "adapt", ckpt, state, batches)
    state, summary = train_loop(stage="adapt", trainer=trainer, state=state, batches=batches, total_steps=ac.steps,
                                rng=jax.random.key(cfg.seed), logger=run.logger, ckpt=ckpt,
                                save_every=cfg.checkpoint.every, log_every=ac.log_every,
                                progress=cfg.logging.progress, start_step=start, extra={"seed": task.seed})
    ckpt.close()
    return trainer.model(state), {"texts": len(task.unlabeled), "objective": "clm" if decoder else "mlm",
                                  "masking": None if decoder else ac.masking, **summary}


def pick_demonstrations(task: Task, verb: Verbalizer, per_class: int, seed: int, model) -> list[tuple[str, str]]:
    """``per_class`` training examples of each class (a seeded draw), each with its class's first
    label word, interleaved class by class; decoders only."""
    if not objectives.is_decoder(model):
        raise ConfigError("prompt.demonstrations needs a decoder (GPT-2 or Llama family): an encoder has no "
                          "shared prefix to put them in; set prompt.demonstrations to 0")
    labels = np.asarray(task.train["label"])
    order = np.random.default_rng(seed + 7919).permutation(len(labels))
    picked = [[i for i in order if labels[i] == c][:per_class] for c in range(len(verb.words))]
    if any(len(p) < per_class for p in picked):
        raise ConfigError(f"prompt.demonstrations {per_class} per class: the training split has fewer examples "
                          "of some class")
    texts = list(task.train["text"])
    return [(texts[p[j]], verb.words[c][0]) for j in range(per_class) for c, p in enumerate(picked)]


def grid_finetune(run: Run, task: Task, model, mode: str, template, verb, *, stage: str, mlm_weight: float = 0.0,
                  lrs: tuple[float, ...] | None = None):
    """LM-BFF protocol: fine-tune once per learning rate of the grid, keep the best on dev."""
    best, grid = None, []
    for lr in lrs or run.cfg.finetune.lr_grid:
        hit = run.reuse.get((task.seed, lr)) if mlm_weight == 0 and mode != "head" and "adapt" not in run.cfg.stage_list \
            else None
        if hit is not None:
            m, s_ = hit[0], {**hit[1], "reused": "backbone selection's screen (same split, recipe and lr)"}
        else:
            m, s_ = _train_cls(run, task, model, mode, template, verb, lr=lr, steps=run.cfg.finetune.steps,
                               stage=stage, mlm_weight=mlm_weight)
        grid.append(s_)
        if best is None or s_["best_dev_accuracy"] > best[1]["best_dev_accuracy"]:
            best = (m, s_)
    return best[0], {"mode": mode, "mlm_weight": mlm_weight, "fgm_epsilon": run.cfg.finetune.fgm_epsilon,
                     "chosen": best[1], "grid": grid}


def run_task_seed(run: Run, seed: int, base_model) -> dict[str, Any]:
    cfg = run.cfg
    stages = cfg.stage_list
    task = prepare_task(run, seed)
    rep: dict[str, Any] = {"seed": seed, "sizes": {"train": len(task.train), "dev": len(task.dev), "test": len(task.test)}}
    pmode = prompt_mode(run)  # prompt (cloze) | similarity
    mode = pmode if cfg.finetune.mode == "prompt" else "head"
    chat = objectives.is_decoder(base_model) and bool(getattr(run.tokenizer, "chat_template", None))
    rule_templates, rule_verb = rule_prompts(cfg.prompt.task_type, task.names, chat=chat)
    verb = parse_label_words(cfg.prompt.label_words, task.names) or rule_verb
    candidates = [cfg.prompt.template] if cfg.prompt.template else rule_templates
    template = Template(candidates[0])
    head_fresh = any(p.startswith("mlm.") or p == "*" for p in run.fresh)
    model = base_model
    reuse_ft = None

    if "prompt" in stages and mode != "head":
        prompt_rep: dict[str, Any] = {"scoring": _scoring_name(model, mode)}
        if cfg.prompt.label_words:
            source = "config"
        elif mode == "similarity":
            verb, prompt_rep["label_word_candidates"] = search_label_words_similarity(run, model, task, template, verb)
            source = "search near the rule words"
        elif not head_fresh:
            verb, prompt_rep["label_word_candidates"] = search_label_words(run, model, task, template)
            source = "search"
        else:
            source = "rules (the MLM head is untrained)"
        if len(candidates) > 1:
            scored = []
            for t in candidates[: cfg.prompt.candidates]:
                _, s_ = _train_cls(run, task, model, mode, Template(t), verb, lr=cfg.finetune.lr_grid[0],
                                   steps=cfg.prompt.search_steps, stage="prompt-search", early_stop=False)
                scored.append({"template": t, "dev_accuracy": s_["best_dev_accuracy"]})
            scored.sort(key=lambda x: -x["dev_accuracy"])
            template = Template(scored[0]["template"])
            prompt_rep["template_candidates"] = scored
        prompt_rep.update(template=template.source, label_words=verb.to_json(), label_words_source=source)
        rep["prompt"] = prompt_rep
    elif mode != "head":
        rep["prompt"] = {"scoring": _scoring_name(model, mode), "template": template.source,
                         "label_words": verb.to_json()}
    if cfg.prompt.demonstrations and mode != "head":
        template = template.with_demos(pick_demonstrations(task, verb, cfg.prompt.demonstrations, seed, model))
        rep["prompt"]["demonstrations"] = [list(d) for d in template.demos]

    if cfg.eval.compare:
        rep["baselines"] = {}
        rep["baselines"]["zero_shot"] = _evaluate(_classifier(run, model, task, pmode, template, verb),
                                                  task.test, cfg.eval.batch_size)
        # The same grid as the real fine-tuning, without adaptation: the "no adapt" ablation. When
        # the real fine-tuning would repeat it exactly (no adapt stage, no joint loss), it is reused.
        m_pft, s_pft = grid_finetune(run, task, model, pmode, template, verb, stage="baseline-prompt-ft")
        if "adapt" not in stages and mode == pmode and cfg.finetune.mlm_weight == 0:
            reuse_ft = (m_pft, {**s_pft, "same_as": "baselines.prompt_ft"})
        rep["baselines"]["prompt_ft"] = _evaluate(_classifier(run, m_pft, task, pmode, template, verb), task.test,
                                                  cfg.eval.batch_size)
        if getattr(model, "classifier", None) is not None:
            m_head, _ = grid_finetune(run, task, model, "head", None, None, stage="baseline-head-ft",
                                      lrs=cfg.eval.head_lr_grid)
            rep["baselines"]["head_ft"] = _evaluate(_classifier(run, m_head, task, "head", None, None), task.test,
                                                    cfg.eval.batch_size)

    if "adapt" in stages:
        model, rep["adapt"] = adapt(run, task, model, template, verb)
        if cfg.eval.compare:
            rep["baselines"]["zero_shot_after_adapt"] = _evaluate(
                _classifier(run, model, task, pmode, template, verb), task.test, cfg.eval.batch_size)

    if "finetune" in stages and reuse_ft is not None:
        model, rep["finetune"] = reuse_ft
    elif "finetune" in stages:
        model, rep["finetune"] = grid_finetune(run, task, model, mode, template, verb, stage="finetune",
                                               mlm_weight=cfg.finetune.mlm_weight)

    run.classifier = _classifier(run, model, task, mode, template if mode != "head" else None,
                                 verb if mode != "head" else None)
    run.model = model
    if "evaluate" in stages:
        bs = cfg.eval.batch_size
        test_logits, dev_logits = (run.classifier.logits(list(ds["text"]), bs) for ds in (task.test, task.dev))
        rep["test"] = _evaluate(run.classifier, task.test, bs, logits=test_logits)
        rep["dev"] = _evaluate(run.classifier, task.dev, bs, logits=dev_logits)
        if cfg.handover.enabled:
            run.handover, rep["handover"] = fit_handover(run, task, dev_logits, test_logits)
    if "distill" in stages:
        run.student, rep["distill"] = distill(run, task, run.classifier, teacher_test=rep.get("test"))
    return rep


def fit_handover(run: Run, task: Task, dev_logits: np.ndarray, test_logits: np.ndarray
                 ) -> tuple[handover.Handover, dict[str, Any]]:
    """Temperature and hand-over threshold fitted on dev (plus out-of-scope dev queries when
    configured), measured on test (plus out-of-scope test queries)."""
    hc, bs = run.cfg.handover, run.cfg.eval.batch_size
    oos = sources.OUT_OF_SCOPE[hc.out_of_scope]() if hc.out_of_scope else None
    oos_dev = run.classifier.logits(oos["dev"], bs) if oos else None
    h = handover.calibrate(dev_logits, np.asarray(task.dev["label"]), oos_dev, in_scope_recall=hc.in_scope_recall,
                           threshold=hc.threshold)
    rep = {**h.to_json(), "out_of_scope": hc.out_of_scope, "threshold_source": "config" if hc.threshold is not None
           else ("dev + out-of-scope dev" if oos else f"dev (keeps {hc.in_scope_recall:.0%} of correct answers)"),
           "dev": handover.measure(h, dev_logits, np.asarray(task.dev["label"]), oos_dev),
           "test": handover.measure(h, test_logits, np.asarray(task.test["label"]),
                                    run.classifier.logits(oos["test"], bs) if oos else None)}
    return h, rep


def _sentences_per_s(clf: Classifier, texts: list[str], batch_size: int) -> float:
    clf.logits(texts, batch_size)  # compile every length bucket first
    t0 = time.perf_counter()
    clf.logits(texts, batch_size)
    return len(texts) / (time.perf_counter() - t0)


def distill(run: Run, task: Task, teacher: Classifier, teacher_test: dict | None = None
            ) -> tuple[Classifier, dict[str, Any]]:
    """The teacher soft-labels the unlabelled pool; a student with a classification head learns
    those labels and the K-shot examples' own (one-hot), keeping its best dev step.
    ``teacher_test``: the teacher's test result when the evaluate stage already has it."""
    cfg, dc = run.cfg, run.cfg.distill
    pool = list(task.unlabeled)[: dc.max_unlabeled]
    t0 = time.perf_counter()
    soft = np.asarray(jax.nn.softmax(jnp.asarray(teacher.logits(pool, cfg.eval.batch_size)) / dc.temperature, axis=-1))
    label_s = time.perf_counter() - t0
    C = len(task.names)
    train_y = np.asarray(task.train["label"], np.int64)
    texts = pool + list(task.train["text"])
    targets = np.concatenate([soft, np.eye(C, dtype=np.float32)[train_y]]).astype(np.float32)
    scfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=dc.student, tokenizer=None,
                                                              dropout=None))
    student, stok, source, _ = build_model(scfg, run.mesh, C)
    if getattr(student, "classifier", None) is None:
        raise ConfigError(f"distill.student {dc.student!r} is not a BERT-family encoder with a classification head")
    seqs = batching.encode(stok, texts, dc.max_length)
    if dc.batch_size % shd.batch_divisor(run.mesh):
        raise ConfigError(f"distill.batch_size {dc.batch_size} must be divisible by the data×fsdp mesh size")
    batches = batching.ExampleBatches(seqs, {"soft_labels": targets}, dc.batch_size, task.seed,
                                      pad_id=stok.pad_token_id or 0)
    loss = lambda m, b, r=None: objectives.distill_loss(m, b, r, pooling=dc.pooling)  # noqa: E731
    trainer, state = Trainer.create(student, loss, dc.optim, dc.steps, run.mesh)

    def classifier(m) -> Classifier:
        return Classifier(m, stok, task.names, "head", max_length=dc.max_length, pooling=dc.pooling)

    best: dict[str, Any] = {"acc": -1.0, "params": None, "step": 0}

    def eval_fn(st):
        acc = _evaluate(classifier(trainer.model(st)), task.dev, cfg.eval.batch_size)["accuracy"]
        if int(st.step) > 0 and acc >= best["acc"]:
            best.update(acc=acc, params=jax.tree.map(lambda x: x.copy(), st.params), step=int(st.step))
        return {"dev_accuracy": acc}

    state, summary = train_loop(stage="distill", trainer=trainer, state=state, batches=batches, total_steps=dc.steps,
                                rng=jax.random.key(cfg.seed), logger=run.logger, ckpt=None,
                                log_every=max(1, dc.steps // 10), eval_fn=eval_fn, eval_every=dc.eval_every,
                                best_metric="dev_accuracy", best_mode="max", progress=cfg.logging.progress)
    student = nnx.merge(trainer.graphdef, best["params"], state.frozen)
    clf = classifier(student)
    rep: dict[str, Any] = {"student": source, "pool": len(pool), "temperature": dc.temperature,
                           "teacher_labelling_s": round(label_s, 1), "best_step": best["step"],
                           "best_dev_accuracy": best["acc"], "train_wall_time_s": summary["wall_time_s"]}
    rep["student_test"] = _evaluate(clf, task.test, cfg.eval.batch_size)
    rep["teacher_test"] = teacher_test or _evaluate(teacher, task.test, cfg.eval.batch_size)
    sample = list(task.test["text"])[:256]
    rep["student_sentences_per_s"] = _sentences_per_s(clf, sample, cfg.eval.batch_size)
    rep["teacher_sentences_per_s"] = _sentences_per_s(teacher, sample, cfg.eval.batch_size)
    rep["speedup"] = rep["student_sentences_per_s"] / rep["teacher_sentences_per_s"]
    return clf, rep


def _mean_std(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)}


def run_task(run: Run) -> None:
    cfg = run.cfg
    seeds = cfg.eval.seed_list or (cfg.data.split_seed,)
    base = run.model
    per_seed = []
    for seed in seeds:
        per_seed.append(run_task_seed(run, seed, base))
        run.report["seeds"] = per_seed
        run.write_report()
    summary: dict[str, Any] = {}
    if all("test" in r for r in per_seed):
        summary["test_accuracy"] = _mean_std([r["test"]["accuracy"] for r in per_seed])
        summary["test_macro_f1"] = _mean_std([r["test"]["macro_f1"] for r in per_seed])
    for name in (per_seed[0].get("baselines") or {}):
        summary[f"{name}_accuracy"] = _mean_std([r["baselines"][name]["accuracy"] for r in per_seed])
    if all("handover" in r for r in per_seed):
        for key in ("in_scope_accuracy", "out_of_scope_recall"):
            if all(key in r["handover"]["test"] for r in per_seed):
                summary[f"handover_{key}"] = _mean_std([r["handover"]["test"][key] for r in per_seed])
    if all("distill" in r for r in per_seed):
        summary["student_test_accuracy"] = _mean_std([r["distill"]["student_test"]["accuracy"] for r in per_seed])
        summary["student_speedup"] = _mean_std([r["distill"]["speedup"] for r in per_seed])
    run.report["summary"] = summary


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


def run_export(run: Run) -> None:
    out = run.out / "export"
    model, pc, peft_meta = run.model, run.cfg.peft, None
    if pc.method != "none" and peft_lib.has_peft(model):
        peft_meta = dataclasses.asdict(pc)
        if pc.method in ("lora", "adalora"):
            if pc.method == "lora" and not isinstance(model, GPT2):
                # Unmerged, in the PEFT library's layout, beside the merged model.
                peft_lib.save_lora_adapter(model, out / "peft_adapter", pc, run.model_source)
                peft_meta["adapter_dir"] = "peft_adapter"
            model = nnx.clone(model)
            peft_lib.merge(model)
            peft_meta["merged"] = True
        else:  # adapters / prefixes / soft prompts change the architecture: kept in a side file
            out.mkdir(parents=True, exist_ok=True)
            peft_lib.save_params(model, out / "peft.safetensors")
            peft_meta["merged"] = False
    hf.save_pretrained(model, out, tokenizer=run.tokenizer)  # collective: every process gathers
    if is_main():
        clf = run.classifier
        meta = {"autogpt_jax_version": __import__("autogpt_jax").__version__, "source_model": run.model_source,
                "architecture": hf.default_architecture(run.model), "task": None}
        if clf is not None:
            meta.update(task={"dataset": run.cfg.data.dataset, "train_file": run.cfg.data.train_file},
                        labels=clf.labels, mode=clf.mode, max_length=clf.max_length, pooling=clf.pooling,
                        template=clf.template.source if clf.template else None,
                        demonstrations=[list(d) for d in clf.template.demos] if clf.template else None,
                        label_words=clf.label_words, peft=peft_meta,
                        similarity_scale=clf.scale if clf.mode == "similarity" else None,
                        handover=run.handover.to_json() if run.handover is not None else None)
        if run.retriever is not None:
            meta.update(retriever="retriever", top_k=run.cfg.retrieval.top_k)
        (out / "autogpt_jax.json").write_text(json.dumps(meta, indent=2) + "\n")
    run.report["export"] = {"dir": str(out)}
    if run.retriever is not None:
        rc = run.cfg.retrieval
        run.retriever.save(out / "retriever", dataset=rc.dataset, top_k=rc.top_k, company=rc.company)
        run.report["export"]["retriever_dir"] = str(out / "retriever")
    if run.student is not None:  # the distilled student: a BertForSequenceClassification that predict serves
        st, sdir = run.student, out / "student"
        hf.save_pretrained(st.model, sdir, tokenizer=st.tokenizer, labels=st.labels)
        if is_main():
            meta = {"autogpt_jax_version": __import__("autogpt_jax").__version__, "source_model": run.cfg.distill.student,
                    "architecture": hf.default_architecture(st.model), "distilled_from": run.model_source,
                    "task": {"dataset": run.cfg.data.dataset, "train_file": run.cfg.data.train_file},
                    "labels": st.labels, "mode": "head", "max_length": st.max_length, "pooling": st.pooling}
            (sdir / "autogpt_jax.json").write_text(json.dumps(meta, indent=2) + "\n")
        run.report["export"]["student_dir"] = str(sdir)


def run_retrieval(run: Run) -> None:
    from autogpt_jax import retrieval

    run.retriever, run.report["retrieval"] = retrieval.train_retriever(run)


STAGE_FUNCS = {"pretrain": run_pretrain, "task": run_task, "retrieval": run_retrieval, "export": run_export}


def _num_labels(cfg: Config) -> int:
    d = cfg.data
    if d.train_file:
        return len({str(r["label"]) for r in sources.read_table(d.train_file, required=("text", "label"))})
    if d.dataset:
        return sources.load_dataset(d.dataset)["train"].features["label"].num_classes
    raise ConfigError("no labelled data: set --data.dataset or --data.train_file")


def _forwarded(cfg: Config) -> list[str]:
    """The settings of a selecting config that its candidates run under."""
    return ["--data.split_seed", str(cfg.data.split_seed), "--data.k_shot", str(cfg.data.k_shot),
            "--seed", str(cfg.seed), "--checkpoint.resume", str(cfg.checkpoint.resume).lower(),
            "--logging.progress", str(cfg.logging.progress).lower(),
            "--logging.tensorboard", str(cfg.logging.tensorboard).lower()]


def select_backbone(cfg: Config, *, return_run: bool = False):
    """Screen each candidate config (its first learning rate, ``select.steps`` steps or its own,
    no test evaluation) on this run's split; run the one with the best dev accuracy (ties: the lower
    dev log-loss) into this run's output_dir, with its own stages unless this config sets some."""
    from autogpt_jax.config import load_config

    out, rows, screens = Path(cfg.output_dir), [], {}
    for path in cfg.select.config_list:
        cand = load_config(["--config_path", path])
        if cand.select.config_list:
            raise ConfigError(f"select.configs: candidate {path} selects among candidates itself; list plain configs")
        if cand.data.dataset != cfg.data.dataset:
            raise ConfigError(f"select.configs: candidate {path} uses dataset {cand.data.dataset!r}, this config "
                              f"{cfg.data.dataset!r}; candidates must share the task")
        t = time.perf_counter()
        screen = load_config(["--config_path", path, *_forwarded(cfg), "--output_dir", str(out / "select" / Path(path).stem),
                              "--stages", "finetune", "--eval.compare", "false",
                              "--finetune.learning_rates", repr(cand.finetune.lr_grid[0]),
                              "--finetune.steps", str(cfg.select.steps or cand.finetune.steps)])
        srun = run_pipeline(screen, return_run=True)
        rep = srun.report
        chosen = rep["seeds"][0]["finetune"]["chosen"]
        # The winner's own run can start from this screen when the screen is exactly its first grid
        # point: same steps, no adaptation or joint loss before it, fixed template and label words.
        if (screen.finetune.steps == cand.finetune.steps and "adapt" not in cand.stage_list
                and cand.finetune.mlm_weight == 0 and cand.prompt.template and cand.prompt.label_words):
            screens[path] = {(cfg.data.split_seed, cand.finetune.lr_grid[0]): (srun.model, chosen)}
        del srun
        rows.append({"config": path, "model": rep["model"], "parameters": rep["parameters"],
                     "dev_accuracy": chosen["best_dev_accuracy"], "dev_log_loss": chosen["best_dev_log_loss"],
                     "learning_rate": cand.finetune.lr_grid[0], "steps": cfg.select.steps or cand.finetune.steps,
                     "seconds": round(time.perf_counter() - t, 1)})
        logging.getLogger(__name__).warning("select: %s (%s) dev accuracy %.3f", path, rep["model"],
                                            chosen["best_dev_accuracy"])
    # Dev accuracy moves in steps of 1/|dev|: ties go to the lower dev log-loss (then the earlier).
    best = max(rows, key=lambda r: (r["dev_accuracy"], -r["dev_log_loss"]))
    extra = ["--eval.seeds", cfg.eval.seeds] if cfg.eval.seeds else []  # the screen uses data.split_seed only
    if cfg.stages != Config.stages:  # stages set on the selecting config (or its command line) win
        extra += ["--stages", cfg.stages]
    run = run_pipeline(load_config(["--config_path", best["config"], *_forwarded(cfg), *extra, "--output_dir", str(out)]),
                       return_run=True, reuse=screens.pop(best["config"], None))
    run.report["backbone_selection"] = {"chosen": best["config"], "model": best["model"], "candidates": rows}
    run.write_report()
    return run if return_run else run.report


def run_pipeline(cfg: Config, *, return_run: bool = False, reuse: dict | None = None):
    if cfg.select.config_list:
        return select_backbone(cfg, return_run=return_run)
    not_built = [s for s in cfg.stage_list if s not in BUILT_STAGES]
    if not_built:
        raise ConfigError(f"stage(s) {not_built} are not built yet; available stages: {','.join(BUILT_STAGES)} "
                          "(for example --stages pretrain,export)")
    shd.init_distributed(cfg.mesh)
    mesh = shd.make_mesh(cfg.mesh)
    out = Path(cfg.output_dir)
    ck_root = out / "checkpoints"
    if not cfg.checkpoint.resume and ck_root.is_dir():
        used = sorted(d.name for d in ck_root.iterdir() if d.is_dir() and any(p.name.isdigit() for p in d.iterdir()))
        if used:
            raise ConfigError(f"{out} already holds checkpoints of an earlier run ({', '.join(used)}); pass "
                              "--checkpoint.resume true to continue from them, or choose a new --output_dir")
    out.mkdir(parents=True, exist_ok=True)
    logger = MetricsLogger(out, cfg.logging, to_dict(cfg))
    t0 = time.perf_counter()
    run = Run(cfg, mesh, out, logger, reuse=reuse or {})
    n_labels = 0
    if cfg.finetune.mode == "head" or (cfg.eval.compare and "finetune" in cfg.stage_list):
        n_labels = _num_labels(cfg)
    run.model, run.tokenizer, run.model_source, run.fresh = build_model(cfg, mesh, n_labels)
    run.report = {
        "model": run.model_source, "parameters": param_count(run.model), "stages": list(cfg.stage_list),
        "devices": {"count": jax.device_count(), "processes": jax.process_count(),
                    "platform": jax.devices()[0].platform, "mesh": dict(mesh.shape)},
        "config": to_dict(cfg),
    }
    order = [s_ for s_ in cfg.stage_list if s_ not in TASK_STAGES]
    if any(s_ in TASK_STAGES for s_ in cfg.stage_list):
        order.insert(1 if "pretrain" in order else 0, "task")
    try:
        for stage in order:
            STAGE_FUNCS[stage](run)
            run.report["wall_time_s"] = round(time.perf_counter() - t0, 2)
            run.write_report()
    finally:
        logger.close()
    return run if return_run else run.report
