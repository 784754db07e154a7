"""The shared config sections: model, data, mesh, optimiser, checkpoints, logging, selection.

One frozen dataclass per section, a comment per field, checks in ``__post_init__``; a failed check
raises ``ConfigError`` with the key and the fix.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from autogpt_jax.errors import ConfigError

DTYPES = ("float32", "bfloat16")


def check(cond: bool, msg: str):
    if not cond:
        raise ConfigError(msg)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # A local directory, a packaged short name (minilm-l6, smollm2-135m, splade-tiny) or a hub id.
    # auto: screen the packaged recipes (autogpt_jax/recipes: MiniLM and SmolLM2) on your labelled
    # data and train the better on dev. Empty (null) means "from scratch": the architecture and
    # sizes below are used.
    name_or_path: Optional[str] = "auto"
    # Tokenizer source when it differs from name_or_path (required from scratch).
    tokenizer: Optional[str] = None
    # Architecture for from-scratch models: bert | gpt2 | llama (a Llama-family decoder: RoPE,
    # RMSNorm, SwiGLU, one key/value head per query head).
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
    # The layer stack as one scanned layer over stacked parameters (jax.lax.scan): XLA compiles one
    # layer instead of every layer, so compile time stops growing with depth. Same numbers either
    # way. null (auto): scanned from 12 layers up. Measured (scripts/bench_compile.py, 2026-12-02):
    # SmolLM2 (30 layers) LoRA train step compiles in 7.4 s instead of 41 s at the same step time;
    # MiniLM (6 layers) gains nothing (8.9 s against 8.5 s).
    scan_layers: Optional[bool] = None

    def __post_init__(self):
        check(self.dtype in DTYPES, f"model.dtype must be one of {DTYPES}, got {self.dtype!r}")
        check(self.arch in ("bert", "gpt2", "llama"), f"model.arch must be bert, gpt2 or llama, got {self.arch!r}")
        if not self.name_or_path:
            check(bool(self.tokenizer), "model.name_or_path is empty (from scratch): set model.tokenizer to a "
                                         "tokenizer directory or packaged short name, e.g. splade-tiny")
            check(self.hidden_size % self.num_heads == 0,
                   f"model.hidden_size {self.hidden_size} must be divisible by model.num_heads {self.num_heads}")
        if self.dropout is not None:
            check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")


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
    # Labelled examples per class for train (and as many again for dev, LM-BFF's protocol); 0: every
    # row. null: 16 for a registered dataset, 0 (every row) for your own files.
    k_shot: Optional[int] = None
    split_seed: int = 42
    # Every row (k_shot 0) and no dev file: this share of each class's rows (at least one) is held out
    # as dev to choose the prompt, the recipe, the learning rate and the backbone; the chosen recipe
    # then trains again on all the rows, so a user with 32 labels trains on 32.
    dev_share: float = 0.25
    # Evaluate on at most this many test examples: a fixed random subset, the same for every split
    # seed (null: the whole test split; 0: none, as backbone selection's screens use). For quick
    # runs; reported figures use the whole split.
    max_test: Optional[int] = None

    def __post_init__(self):
        if self.k_shot is None:  # resolved here, so every reader (and a forwarded setting) sees a number
            object.__setattr__(self, "k_shot", 0 if self.train_file else 16)
        check(self.k_shot >= 0, f"data.k_shot must be >= 0 (0: all the data), got {self.k_shot}")
        check(0.0 < self.dev_share < 1.0, f"data.dev_share must be in (0, 1), got {self.dev_share}")

        check(0.0 <= self.eval_fraction < 0.5, f"data.eval_fraction must be in [0, 0.5), got {self.eval_fraction}")
        check(self.max_unlabeled is None or self.max_unlabeled >= 1, "data.max_unlabeled must be >= 1 or null")
        check(self.max_test is None or self.max_test >= 0, "data.max_test must be >= 0 or null")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    # What the task is, in a sentence ("route customer messages to the right team"): it joins the
    # prompt candidates of the rule library (the {description} placeholder of a template).
    description: Optional[str] = None

    def __post_init__(self):
        check(self.description is None or bool(self.description.strip()),
              "task.description is empty; leave it out or describe the task in a sentence")


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
        check(all(s == -1 or s >= 1 for s in sizes), f"mesh sizes must be >= 1 or -1, got {sizes}")
        check(sum(s == -1 for s in sizes) <= 1, f"at most one mesh axis may be -1, got {sizes}")


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
        check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        check(self.schedule in ("linear", "cosine", "constant"),
               f"schedule must be linear, cosine or constant, got {self.schedule!r}")
        check(self.warmup_steps >= 0 and self.grad_accum >= 1 and self.grad_clip >= 0,
               "warmup_steps >= 0, grad_accum >= 1 and grad_clip >= 0 are required")


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
        check(self.every >= 1 and self.keep >= 1, "checkpoint.every and checkpoint.keep must be >= 1")
        check(self.best_mode in ("min", "max"), "checkpoint.best_mode must be min or max")


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
    # Read from a candidate config: screen it only for tasks with at most this many classes (null:
    # any). The decoder recipe sets it, its step time growing with the number of label words.
    max_classes: Optional[int] = None
    # The screened candidates (two or more) as one ensemble, weighted by their dev accuracy: dev
    # (when the combination's dev accuracy is at least the best single candidate's), always, or
    # never (the best one only); auto: always for the packaged recipes (model.name_or_path auto:
    # +5.2, +1.1 and +0.5 over MiniLM alone on three tasks where the dev rule chose it once, split
    # seed 42, 2026-12-08), dev for listed configs. Combined, every candidate runs its own config
    # and the export holds them all.
    combine: str = "auto"

    def __post_init__(self):
        check(self.steps >= 0, f"select.steps must be >= 0, got {self.steps}")
        check(self.max_classes is None or self.max_classes >= 2, "select.max_classes must be >= 2 or null")
        check(self.combine in ("auto", "dev", "always", "never"),
              f"select.combine must be auto, dev, always or never, got {self.combine!r}")

    @property
    def config_list(self) -> list[str]:
        return [c.strip() for c in (self.configs or "").split(",") if c.strip()]
