"""Typed run configuration: one frozen dataclass per section, checks in ``__post_init__``.

A YAML file (``--config_path``) overrides the defaults, and dotted flags (``--model.dtype bfloat16``)
override the file, in draccus style. Unknown keys, in the file or on the command line, fail before
anything runs, with the closest valid key suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

from autogpt_jax.errors import AutoGPTJaxError

STAGES = ("pretrain", "prompt", "adapt", "finetune", "evaluate", "distill", "retrieval", "export")
DTYPES = ("float32", "bfloat16")


class ConfigError(AutoGPTJaxError, ValueError):
    """A configuration value or key is invalid."""


def _check(cond: bool, msg: str):
    if not cond:
        raise ConfigError(msg)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # A local directory, a packaged short name (minilm-l6, splade-tiny) or a hub id. Empty (null)
    # means "from scratch": the architecture and sizes below are used.
    name_or_path: Optional[str] = "minilm-l6"
    # Tokenizer source when it differs from name_or_path (required from scratch).
    tokenizer: Optional[str] = None
    # Architecture for from-scratch models: bert | gpt2.
    arch: str = "bert"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 512
    max_positions: int = 512
    # Compute dtype; parameters (master weights) stay float32.
    dtype: str = "float32"
    # Dropout override for hidden and attention dropout (null: the checkpoint's own).
    dropout: Optional[float] = None

    def __post_init__(self):
        _check(self.dtype in DTYPES, f"model.dtype must be one of {DTYPES}, got {self.dtype!r}")
        _check(self.arch in ("bert", "gpt2"), f"model.arch must be bert or gpt2, got {self.arch!r}")
        if not self.name_or_path:
            _check(bool(self.tokenizer), "model.name_or_path is empty (from scratch): set model.tokenizer to a "
                                         "tokenizer directory or packaged short name, e.g. splade-tiny")
            _check(self.hidden_size % self.num_heads == 0,
                   f"model.hidden_size {self.hidden_size} must be divisible by model.num_heads {self.num_heads}")
        if self.dropout is not None:
            _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # Registered dataset name (see autogpt_jax.data.sources) for the labelled task.
    dataset: Optional[str] = None
    train_file: Optional[str] = None
    dev_file: Optional[str] = None
    test_file: Optional[str] = None
    # Unlabelled text: a CSV/JSONL file with a `text` column, or a registered corpus name.
    unlabeled_file: Optional[str] = None
    unlabeled: Optional[str] = None
    # Use at most this many unlabelled documents (null: all).
    max_unlabeled: Optional[int] = None
    # Fraction of unlabelled documents held out to measure the pretraining loss.
    eval_fraction: float = 0.02
    # Labelled examples per class for train (and as many again for dev); 0: the whole pool (full
    # data, a stratified 10% of it for dev).
    k_shot: int = 16
    split_seed: int = 42
    # Evaluate on at most this many test examples: a fixed random subset, the same for every split
    # seed (null: the whole test split). For quick runs; reported figures use the whole split.
    max_test: Optional[int] = None

    def __post_init__(self):
        _check(self.k_shot >= 0, f"data.k_shot must be >= 0 (0: all the data), got {self.k_shot}")
        _check(0.0 <= self.eval_fraction < 0.5, f"data.eval_fraction must be in [0, 0.5), got {self.eval_fraction}")
        _check(self.max_unlabeled is None or self.max_unlabeled >= 1, "data.max_unlabeled must be >= 1 or null")
        _check(self.max_test is None or self.max_test >= 1, "data.max_test must be >= 1 or null")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    # Devices along each mesh axis; one axis may be -1 (all remaining devices).
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # Multi-process (jax.distributed). Null values fall back to the environment
    # (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) or to a single process.
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor)
        _check(all(s == -1 or s >= 1 for s in sizes), f"mesh sizes must be >= 1 or -1, got {sizes}")
        _check(sum(s == -1 for s in sizes) <= 1, f"at most one mesh axis may be -1, got {sizes}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 5e-4
    # linear | cosine | constant (after warmup)
    schedule: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    # Global-norm clipping (0 disables).
    grad_clip: float = 1.0
    # Micro-batches per update: the batch is split and gradients summed inside one step.
    grad_accum: int = 1

    def __post_init__(self):
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(self.schedule in ("linear", "cosine", "constant"),
               f"schedule must be linear, cosine or constant, got {self.schedule!r}")
        _check(self.warmup_steps >= 0 and self.grad_accum >= 1 and self.grad_clip >= 0,
               "warmup_steps >= 0, grad_accum >= 1 and grad_clip >= 0 are required")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    # mlm (BERT) or clm (GPT-2); auto picks by architecture.
    objective: str = "auto"
    steps: int = 200
    batch_size: int = 32
    seq_len: int = 128
    mask_rate: float = 0.15
    # random | whole_word
    masking: str = "whole_word"
    eval_every: int = 50
    eval_batches: int = 4
    log_every: int = 10
    # Stop when the eval loss has not improved for this many evaluations (0: never).
    early_stop_patience: int = 0
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(learning_rate=1e-3, warmup_steps=20))

    def __post_init__(self):
        _check(self.objective in ("auto", "mlm", "clm"), f"pretrain.objective must be auto, mlm or clm")
        _check(self.masking in ("random", "whole_word"), f"pretrain.masking must be random or whole_word")
        _check(0.0 < self.mask_rate < 1.0, f"pretrain.mask_rate must be in (0, 1), got {self.mask_rate}")
        _check(self.steps >= 1 and self.batch_size >= 1 and self.seq_len >= 8,
               "pretrain.steps >= 1, pretrain.batch_size >= 1 and pretrain.seq_len >= 8 are required")
        _check(self.batch_size % self.optim.grad_accum == 0,
               f"pretrain.batch_size {self.batch_size} must be divisible by optim.grad_accum {self.optim.grad_accum}")


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    # A fixed template such as "{text} It was {mask}." (null: choose among the rule-based
    # candidates for task_type by dev accuracy after a short fine-tune).
    template: Optional[str] = None
    # Fixed label words, classes separated by "|", alternatives by ",": "terrible,bad|great,good".
    # Null: automatic search when the MLM head is pretrained, else words from the label names.
    label_words: Optional[str] = None
    # sentiment | topic | intent | nli: which rule library to draw templates from.
    task_type: str = "sentiment"
    # How many template candidates to try, and fine-tuning steps for each trial.
    candidates: int = 3
    search_steps: int = 30
    # Automatic label words: top-k words per class by mask probability, combinations scored on train.
    top_k_words: int = 8
    max_length: int = 96
    # How a prompt turns into class scores. cloze: the MLM head's logits of the label words at the
    # mask. similarity: cosine between the input's sentence embedding and each class description
    # (the template with its label word and without the input, "It was great."), scaled by
    # similarity_scale -- for sentence encoders, whose MLM head is missing or untrained. auto:
    # similarity when the checkpoint has no MLM head, else cloze.
    scoring: str = "auto"
    similarity_scale: float = 20.0
    # Decoders: labelled training examples per class shown before each input as earlier turns of
    # the conversation (in-context demonstrations, LM-BFF); they run once per batch as part of the
    # shared prefix. 0: none.
    demonstrations: int = 0

    def __post_init__(self):
        _check(self.demonstrations >= 0, f"prompt.demonstrations must be >= 0, got {self.demonstrations}")
        _check(self.task_type in ("sentiment", "topic", "intent", "nli"),
               f"prompt.task_type must be sentiment, topic, intent or nli, got {self.task_type!r}")
        _check(self.scoring in ("auto", "cloze", "similarity"),
               f"prompt.scoring must be auto, cloze or similarity, got {self.scoring!r}")
        _check(self.similarity_scale > 0, "prompt.similarity_scale must be > 0")
        _check(self.candidates >= 1 and self.search_steps >= 1 and self.top_k_words >= 1 and self.max_length >= 16,
               "prompt.candidates, prompt.search_steps, prompt.top_k_words >= 1 and prompt.max_length >= 16")
        if self.template is not None:
            from autogpt_jax.prompts.templates import Template

            Template(self.template)


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    steps: int = 150
    batch_size: int = 16
    seq_len: int = 96
    mask_rate: float = 0.15
    # prompt_aware | whole_word | random
    masking: str = "prompt_aware"
    # Prompt-aware: probability of masking the label word of a prompted training sentence.
    label_word_rate: float = 0.5
    # Unlabelled task texts to use at most (the rest of the labelled pool, labels dropped, by default).
    max_unlabeled: int = 4000
    log_every: int = 10
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(learning_rate=1e-4, warmup_steps=15))

    def __post_init__(self):
        _check(self.masking in ("prompt_aware", "whole_word", "random"),
               f"adapt.masking must be prompt_aware, whole_word or random, got {self.masking!r}")
        _check(0 < self.label_word_rate <= 1 and 0 < self.mask_rate < 1, "adapt rates must be in (0, 1]")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    # prompt (cloze over label words at the mask) | head (classifier on the pooled output)
    mode: str = "prompt"
    steps: int = 120
    batch_size: int = 8
    # The grid (LM-BFF protocol: best on dev): comma-separated values.
    learning_rates: str = "1e-4,3e-5"
    # Joint objective L = L_task + mlm_weight · L_mlm (on unlabelled task text); 0 disables.
    mlm_weight: float = 0.0
    # FGM adversarial training: perturb the word embeddings by ε along the loss gradient (0: off).
    fgm_epsilon: float = 0.0
    eval_every: int = 10
    early_stop_patience: int = 6
    # head mode: pooler | cls | mean
    pooling: str = "mean"
    # Decoders (prompt mode, single-token label words): pack each batch's prompts end to end into
    # rows of at least 128 tokens, each attending only to itself, instead of padding every prompt to
    # the longest; the same loss with fewer padding tokens computed.
    pack: bool = True
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(learning_rate=1e-4, warmup_steps=10,
                                                                               weight_decay=0.01))

    def __post_init__(self):
        _check(self.mode in ("prompt", "head"), f"finetune.mode must be prompt or head, got {self.mode!r}")
        _check(self.pooling in ("pooler", "cls", "mean"), "finetune.pooling must be pooler, cls or mean")
        _check(self.mlm_weight >= 0, "finetune.mlm_weight must be >= 0")
        _check(self.fgm_epsilon >= 0, "finetune.fgm_epsilon must be >= 0")
        try:
            lrs = self.lr_grid
        except ValueError:
            raise ConfigError(f"finetune.learning_rates must be comma-separated numbers, got {self.learning_rates!r}")
        _check(bool(lrs) and all(lr > 0 for lr in lrs), "finetune.learning_rates must be positive")

    @property
    def lr_grid(self) -> tuple[float, ...]:
        return tuple(float(x) for x in str(self.learning_rates).split(",") if x.strip())


PEFT_METHODS = ("none", "lora", "adalora", "adapter", "prefix", "prompt", "bitfit")


@dataclasses.dataclass(frozen=True)
class PeftConfig:
    # none (full fine-tuning) | lora | adalora | adapter | prefix | prompt | bitfit
    method: str = "none"
    # lora / adalora: projections to adapt (query, key, value, out, intermediate, output)
    targets: str = "query,value"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # adalora: triplets per matrix at the start and (on average) at the end of the budget schedule;
    # the budget stays full for t_init steps, falls cubically, and is final t_final steps before
    # the end; masks are re-chosen every delta_t steps; importance EMAs use beta1 / beta2.
    init_rank: int = 12
    target_rank: int = 4
    adalora_t_init: int = 10
    adalora_t_final: int = 20
    adalora_delta_t: int = 5
    adalora_beta1: float = 0.85
    adalora_beta2: float = 0.85
    orth_reg: float = 0.1
    # adapter: bottleneck width
    adapter_size: int = 64
    # prefix / prompt: trained key-value slots per layer / input vectors
    num_virtual_tokens: int = 16
    # Dtype of the frozen (not trained) weights: bfloat16 halves their memory.
    frozen_dtype: str = "float32"

    def __post_init__(self):
        _check(self.method in PEFT_METHODS, f"peft.method must be one of {', '.join(PEFT_METHODS)}, got {self.method!r}")
        _check(self.frozen_dtype in DTYPES, f"peft.frozen_dtype must be one of {DTYPES}")
        _check(self.rank >= 1 and self.init_rank >= 1 and self.adapter_size >= 1 and self.num_virtual_tokens >= 1,
               "peft.rank, peft.init_rank, peft.adapter_size and peft.num_virtual_tokens must be >= 1")
        _check(1 <= self.target_rank <= self.init_rank,
               f"peft.target_rank must be in [1, init_rank={self.init_rank}], got {self.target_rank}")
        _check(0.0 <= self.dropout < 1.0, "peft.dropout must be in [0, 1)")
        _check(self.alpha > 0 and self.orth_reg >= 0 and self.adalora_delta_t >= 1,
               "peft.alpha > 0, peft.orth_reg >= 0 and peft.adalora_delta_t >= 1 are required")
        _check(bool(self.target_list), "peft.targets is empty")

    @property
    def target_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in str(self.targets).split(",") if t.strip())


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    # Split seeds: each runs prompt→adapt→finetune→evaluate on its own K-shot split; mean ± std
    # is reported. Empty: just data.split_seed.
    seeds: str = ""
    batch_size: int = 64
    # Also run the baselines on the same splits: zero-shot prompt, head fine-tuning and prompt
    # fine-tuning without adaptation (the table `make train` prints).
    compare: bool = False
    # Learning-rate grid of the head fine-tuning baseline (a fresh classifier head wants larger
    # steps than prompt fine-tuning of a sentence encoder).
    head_learning_rates: str = "1e-4,3e-5"

    def __post_init__(self):
        try:
            ok = bool(self.head_lr_grid) and all(lr > 0 for lr in self.head_lr_grid)
        except ValueError:
            ok = False
        _check(ok, f"eval.head_learning_rates must be comma-separated positive numbers, got {self.head_learning_rates!r}")
        try:
            self.seed_list
        except ValueError:
            raise ConfigError(f"eval.seeds must be comma-separated integers, got {self.seeds!r}") from None

    @property
    def head_lr_grid(self) -> tuple[float, ...]:
        return tuple(float(x) for x in str(self.head_learning_rates).split(",") if x.strip())

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(int(x) for x in str(self.seeds).split(",") if x.strip())


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Stage ``distill``: the fine-tuned model (teacher) soft-labels the unlabelled task pool, and a
    small student with a classification head learns those labels (plus the K-shot examples' own),
    for fast serving. Exported to ``export/student/``."""

    student: str = "minilm-l6"
    steps: int = 300
    batch_size: int = 32
    # Unlabelled texts the teacher labels (the task's pool, capped).
    max_unlabeled: int = 4000
    # Teacher logits are divided by this before the softmax (soft targets).
    temperature: float = 1.0
    max_length: int = 64
    pooling: str = "mean"
    eval_every: int = 50
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(learning_rate=5e-5, warmup_steps=30))

    def __post_init__(self):
        _check(self.steps >= 1 and self.batch_size >= 1 and self.max_unlabeled >= 1 and self.eval_every >= 1,
               "distill.steps, batch_size, max_unlabeled and eval_every must be >= 1")
        _check(self.temperature > 0, f"distill.temperature must be > 0, got {self.temperature}")
        _check(self.pooling in ("cls", "mean", "pooler"), f"distill.pooling must be cls, mean or pooler, got {self.pooling!r}")


@dataclasses.dataclass(frozen=True)
class HandoverConfig:
    """Out-of-scope handling (see autogpt_jax.handover): the evaluate stage fits a temperature and a
    confidence threshold on dev; below the threshold ``predict`` says to hand over to a human."""

    enabled: bool = False
    # Out-of-scope queries for calibration (validation split) and measurement (test split): a
    # registered source (clinc150). Null: the threshold keeps in_scope_recall of the correctly
    # answered dev questions.
    out_of_scope: Optional[str] = None
    in_scope_recall: float = 0.95
    # A fixed threshold on calibrated confidence instead of the chosen one.
    threshold: Optional[float] = None

    def __post_init__(self):
        _check(0.0 < self.in_scope_recall <= 1.0, f"handover.in_scope_recall must be in (0, 1], got {self.in_scope_recall}")
        _check(self.threshold is None or 0.0 <= self.threshold <= 1.0,
               f"handover.threshold must be in [0, 1] or null, got {self.threshold}")
        if self.out_of_scope is not None:
            from autogpt_jax.data.sources import OUT_OF_SCOPE

            _check(self.out_of_scope in OUT_OF_SCOPE, f"handover.out_of_scope {self.out_of_scope!r} is not a registered "
                                                      f"source of out-of-scope queries ({', '.join(sorted(OUT_OF_SCOPE))})")


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """Stage ``retrieval`` (customer-service answers, see autogpt_jax.retrieval): a bi-encoder
    fine-tuned contrastively on question -> answer pairs, and the answer index; exported to
    ``export/retriever/``."""

    # A registered dataset with question/answer/intent columns and a held-out test split.
    dataset: Optional[str] = "bitext_support"
    # The encoder (null: model.name_or_path, the run's own BERT).
    model: Optional[str] = None
    steps: int = 100
    batch_size: int = 32
    # InfoNCE temperature: similarities are divided by it before the softmax.
    temperature: float = 0.05
    # Other answers of the same intent in a batch are not negatives.
    mask_same_intent: bool = True
    question_max_length: int = 64
    answer_max_length: int = 128
    # The index holds at most this many responses of each intent.
    answers_per_intent: int = 20
    # Answers returned per question (one per intent).
    top_k: int = 3
    # Company details filled into the answers' {{placeholders}}, e.g. {"Website Name": "shop.example"}
    # (merged over autogpt_jax.retrieval.DEFAULT_COMPANY).
    company: dict[str, str] = dataclasses.field(default_factory=dict)
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(learning_rate=3e-5, warmup_steps=10))

    def __post_init__(self):
        _check(self.temperature > 0, f"retrieval.temperature must be > 0, got {self.temperature}")
        _check(self.steps >= 0 and self.batch_size >= 2, "retrieval.steps must be >= 0 and retrieval.batch_size >= 2")
        _check(self.answers_per_intent >= 1 and self.top_k >= 1, "retrieval.answers_per_intent and top_k must be >= 1")
        _check(self.question_max_length >= 8 and self.answer_max_length >= 8,
               "retrieval.question_max_length and answer_max_length must be >= 8")
        _check(isinstance(self.company, dict) and all(isinstance(v, str) for v in self.company.values()),
               "retrieval.company must map placeholder names to strings")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    # Save every N steps (and always at the end of a stage).
    every: int = 100
    # Keep the newest K, plus the best by `best_metric`.
    keep: int = 2
    best_metric: str = "eval_loss"
    best_mode: str = "min"
    # Restore the latest checkpoint of each stage and continue from it.
    resume: bool = False
    async_save: bool = True

    def __post_init__(self):
        _check(self.every >= 1 and self.keep >= 1, "checkpoint.every and checkpoint.keep must be >= 1")
        _check(self.best_mode in ("min", "max"), "checkpoint.best_mode must be min or max")


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    progress: bool = True
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "autogpt_jax"


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    # Backbone selection: comma-separated config files, one per candidate backbone (e.g. the MiniLM
    # and the SmolLM2 config). Each candidate is screened on this run's split with its own prompt,
    # PEFT method and first learning rate for `steps` steps (0: its own finetune.steps); the one
    # with the best dev accuracy (ties: lower dev log-loss) then runs its own config into this
    # run's output_dir, and the report says which.
    configs: Optional[str] = None
    steps: int = 0

    def __post_init__(self):
        _check(self.steps >= 0, f"select.steps must be >= 0, got {self.steps}")

    @property
    def config_list(self) -> list[str]:
        return [c.strip() for c in (self.configs or "").split(",") if c.strip()]


@dataclasses.dataclass(frozen=True)
class Config:
    output_dir: str = "runs/default"
    seed: int = 0
    # Comma-separated subset of: pretrain,prompt,adapt,finetune,evaluate,distill,export
    stages: str = "pretrain"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    prompt: PromptConfig = dataclasses.field(default_factory=PromptConfig)
    adapt: AdaptConfig = dataclasses.field(default_factory=AdaptConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    peft: PeftConfig = dataclasses.field(default_factory=PeftConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    handover: HandoverConfig = dataclasses.field(default_factory=HandoverConfig)
    retrieval: RetrievalConfig = dataclasses.field(default_factory=RetrievalConfig)
    select: SelectConfig = dataclasses.field(default_factory=SelectConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)

    def __post_init__(self):
        bad = [s for s in self.stage_list if s not in STAGES]
        _check(not bad, f"unknown stage(s) {bad} in --stages; choose from {','.join(STAGES)}")
        _check(bool(self.stage_list), "--stages is empty")
        _check(not (self.finetune.fgm_epsilon > 0 and self.peft.method != "none"),
               "finetune.fgm_epsilon perturbs the trained word embeddings; with peft.method "
               f"{self.peft.method} they are frozen. Use one or the other")
        _check(not self.handover.enabled or "evaluate" in self.stage_list,
               "handover.enabled calibrates the hand-over threshold in the evaluate stage; add evaluate to --stages")

    @property
    def stage_list(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.stages.split(",") if s.strip())


# --------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------


def _field_types(cls=Config, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        t = f.type if not isinstance(f.type, str) else eval(f.type, globals())  # noqa: S307 - our own annotations
        if dataclasses.is_dataclass(t):
            out.update(_field_types(t, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = t
    return out


def valid_keys(cls=Config, prefix: str = "") -> list[str]:
    return list(_field_types(cls, prefix))


def _quote_strings(argv: list[str]) -> list[str]:
    """Command-line values of string fields are taken literally: draccus reads values as YAML, in
    which a template such as "{text} It was {mask}." would be a mapping."""
    types = _field_types()
    out = list(argv)
    for i, a in enumerate(out):
        if not a.startswith("--") or "=" in a or i + 1 >= len(out):
            continue
        t = types.get(a[2:])
        if t in (str, Optional[str]) and out[i + 1] not in ("null", "None"):
            v = out[i + 1]
            if not (v.startswith("'") and v.endswith("'") and len(v) > 1):
                out[i + 1] = "'" + v.replace("'", "''") + "'"
    return out


def _unknown(key: str, where: str) -> ConfigError:
    keys = valid_keys()
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(keys)}"
    return ConfigError(f"unknown config key {key!r} {where}{hint}")


def _check_yaml_keys(node: Any, prefix: str, path: Path):
    if not isinstance(node, dict):
        return
    keys = set(valid_keys())
    sections = {k.rsplit(".", 1)[0] for k in keys if "." in k}
    sections |= {s.rsplit(".", 1)[0] for s in list(sections) if "." in s}
    for k, v in node.items():
        full = f"{prefix}{k}"
        if full in sections:
            _check_yaml_keys(v, full + ".", path)
        elif full not in keys:
            raise _unknown(full, f"in {path}")


def load_config(argv: list[str] | None = None) -> Config:
    """Parse ``--config_path FILE`` plus dotted overrides into a validated ``Config``."""
    import draccus

    argv = list(sys.argv[1:] if argv is None else argv)
    keys = set(valid_keys())
    config_path = None
    for i, a in enumerate(argv):
        if a.startswith("--"):
            key = a[2:].split("=", 1)[0]
            if key == "config_path":
                config_path = argv[i + 1] if "=" not in a and i + 1 < len(argv) else a.split("=", 1)[-1]
            elif key not in keys and key not in ("help", "h"):
                raise _unknown(key, "on the command line")
    if config_path is not None:
        p = Path(config_path)
        if not p.is_file():
            raise ConfigError(f"--config_path {config_path}: no such file")
        try:
            _check_yaml_keys(yaml.safe_load(p.read_text()) or {}, "", p)
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML ({e})") from None
    try:
        return draccus.parse(Config, args=_quote_strings(argv))
    except Exception as e:
        # draccus wraps the errors of our __post_init__ checks; surface the original message.
        cause = e
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise ConfigError(str(cause)) from None
        if isinstance(e, (ValueError, TypeError, yaml.YAMLError)) or type(e).__name__ in ("DecodingError", "ParsingError"):
            raise ConfigError(f"invalid configuration: {e}") from None
        raise


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
