"""The config sections of the training stages: pretrain, prompt, adapt, finetune, PEFT and eval
(the stages that label the pool, selftrain and distill, are in ``pool``; the customer-service
sections in ``support``)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from autogpt_jax.config.sections import DTYPES, OptimConfig, check
from autogpt_jax.errors import ConfigError

FINETUNE_MODES = ("prompt", "head", "probe", "setfit", "auto")
# The modes whose classifier is the model's classification head.
HEAD_MODES = ("head", "probe", "setfit", "auto")
CALIBRATIONS = ("none", "content_free", "prior", "both", "pool")

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
        check(self.objective in ("auto", "mlm", "clm"), "pretrain.objective must be auto, mlm or clm")
        check(self.masking in ("random", "whole_word"), "pretrain.masking must be random or whole_word")
        check(0.0 < self.mask_rate < 1.0, f"pretrain.mask_rate must be in (0, 1), got {self.mask_rate}")
        check(self.steps >= 1 and self.batch_size >= 1 and self.seq_len >= 8,
               "pretrain.steps >= 1, pretrain.batch_size >= 1 and pretrain.seq_len >= 8 are required")
        check(self.batch_size % self.optim.grad_accum == 0,
               f"pretrain.batch_size {self.batch_size} must be divisible by optim.grad_accum {self.optim.grad_accum}")


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    # A fixed template such as "{text} It was {mask}." (null: choose among the rule-based
    # candidates for task_type by dev accuracy after a short fine-tune).
    template: Optional[str] = None
    # Fixed label words, each class by its name: "negative=terrible,bad|positive=great,good" (classes
    # separated by "|", alternatives by ","), or a JSON/YAML file mapping each class to its words.
    # Null: automatic search when the MLM head is pretrained, else the class names themselves.
    label_words: Optional[str] = None
    # The rule candidates are built from the label names (and task.description) for any task; a
    # task type (sentiment | topic | intent | nli) adds its own library's templates before them.
    task_type: Optional[str] = None
    # How many template candidates to try, and fine-tuning steps for each trial.
    candidates: int = 3
    search_steps: int = 30
    # search_steps 0 ranks the candidates by zero-shot dev accuracy (ties: lower dev log-loss).
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
    # Prompt ensemble (PET): the `ensemble` best prompts -- ranked (template, label words) pairs,
    # each trained with `ensemble_seeds` seeds -- are fine-tuned (lr grid on dev each) and
    # combined by their log-probabilities averaged with weights: dev (each member's dev
    # accuracy) or uniform. 1: a single model.
    ensemble: int = 1
    ensemble_weighting: str = "dev"
    ensemble_seeds: int = 1
    # Decoders: this many task instructions written by the model itself after reading labelled rows
    # (two of each class), each a template candidate ranked with the rule ones (the design's
    # model-based prompt generator; LM-BFF wrote templates with T5, APE with an LLM). 0: none.
    written: int = 0
    # Decoders: this many paraphrases of each rule instruction, written by the model itself
    # (generate_text), join the template candidates (LM-BFF generated them with T5). 0: none.
    paraphrases: int = 0
    # Calibration of prompt scores (cloze, next-token, similarity) after fine-tuning: none |
    # content_free (subtract the mean log-probability of content-free inputs -- "N/A", "", the
    # mask token -- Zhao et al. 2021) | prior (a class bias fitted on dev by log-loss) | both |
    # pool (the bias that makes the mean prediction over `calibration_pool` unlabelled task texts
    # match the labelled examples' class share: balanced classes).
    calibrate: str = "none"
    calibration_pool: int = 1000
    # Keep a fitted calibration only where it does not lower dev accuracy (a tie: where it does not
    # raise dev log-loss); the report's dev_check says which. Content-free calibration cost the
    # similarity-scored MiniLM 8 points on one MR seed and the chat decoder 2 on another.
    calibrate_check: bool = True

    def __post_init__(self):
        check(self.ensemble >= 1 and self.ensemble_seeds >= 1 and self.paraphrases >= 0 and self.written >= 0,
              "prompt.ensemble and prompt.ensemble_seeds must be >= 1, prompt.paraphrases and prompt.written >= 0")
        check(self.ensemble_weighting in ("dev", "uniform"),
              f"prompt.ensemble_weighting must be dev or uniform, got {self.ensemble_weighting!r}")
        check(self.calibrate in CALIBRATIONS,
              f"prompt.calibrate must be one of {', '.join(CALIBRATIONS)}, got {self.calibrate!r}")
        check(self.calibration_pool >= 1, f"prompt.calibration_pool must be >= 1, got {self.calibration_pool}")
        check(self.demonstrations >= 0, f"prompt.demonstrations must be >= 0, got {self.demonstrations}")
        check(self.task_type in (None, "sentiment", "topic", "intent", "nli"),
               f"prompt.task_type must be sentiment, topic, intent, nli or null, got {self.task_type!r}")
        check(self.scoring in ("auto", "cloze", "similarity"),
               f"prompt.scoring must be auto, cloze or similarity, got {self.scoring!r}")
        check(self.similarity_scale > 0, "prompt.similarity_scale must be > 0")
        check(self.candidates >= 1 and self.search_steps >= 0 and self.top_k_words >= 1 and self.max_length >= 16,
               "prompt.candidates, prompt.top_k_words >= 1, prompt.search_steps >= 0 and prompt.max_length >= 16")


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    # 0: no adaptation (a run with unlabelled text and no --stages then skips the adapt stage)
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
        check(self.masking in ("prompt_aware", "whole_word", "random"),
               f"adapt.masking must be prompt_aware, whole_word or random, got {self.masking!r}")
        check(0 < self.label_word_rate <= 1 and 0 < self.mask_rate < 1, "adapt rates must be in (0, 1]")
        check(self.steps >= 0, f"adapt.steps must be >= 0 (0: no adaptation), got {self.steps}")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    # prompt (cloze over label words at the mask) | head (classifier on the pooled output, trained by
    # SGD) | probe (a logistic head fitted on the frozen encoder's mean-pooled embeddings) | setfit
    # (the encoder tuned contrastively on pairs of the labelled rows, then the probe) | auto (probe,
    # setfit and prompt fine-tuning each trained, the best on dev kept; encoders).
    mode: str = "prompt"
    # Weigh every class the same in the task loss (and the probe): weights N / (C · n_class). On for
    # imbalanced label sets; a balanced set gets weights of one.
    balance: bool = True
    # probe: the L2 strengths tried (scikit-learn's 1/C), the best on dev kept.
    probe_l2: str = "0.1,1,10"
    # setfit: contrastive steps (batches of setfit_batch_size rows, every pair in a batch), lr.
    setfit_steps: int = 100
    setfit_batch_size: int = 16
    setfit_lr: float = 2e-5
    refit: bool = True  # dev held out of your rows (no dev file): the chosen recipe trains again on all
    # probe / setfit: this many pool texts per class, the ones the fitted head labels most confidently
    # (class-balanced), join its rows, kept when dev accuracy does not drop (0: off); from at most
    # pool_max pool texts.
    pool_labels: int = 0
    pool_max: int = 4000
    # auto: also the ensemble of the screened candidates (log-probabilities averaged, weighted by dev
    # accuracy), the task model when it beats the best single candidate on dev.
    combine: bool = False
    steps: int = 120
    batch_size: int = 8
    # The grid (LM-BFF protocol: best on dev): comma-separated values.
    learning_rates: str = "1e-4,3e-5"
    # How the grid's point is chosen on dev: accuracy (ties: the lower dev log-loss) | log_loss.
    select: str = "accuracy"
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
        check(self.mode in FINETUNE_MODES, f"finetune.mode must be one of {', '.join(FINETUNE_MODES)}, got {self.mode!r}")
        try:
            ok = bool(self.probe_l2_grid) and all(v > 0 for v in self.probe_l2_grid)
        except ValueError:
            ok = False
        check(ok, f"finetune.probe_l2 must be comma-separated positive numbers, got {self.probe_l2!r}")
        check(self.pool_labels >= 0 and self.pool_max >= 1, "finetune.pool_labels >= 0 and finetune.pool_max >= 1")
        check(self.setfit_steps >= 1 and self.setfit_batch_size >= 2 and self.setfit_lr > 0,
              "finetune.setfit_steps >= 1, finetune.setfit_batch_size >= 2 and finetune.setfit_lr > 0 are required")
        check(self.pooling in ("pooler", "cls", "mean"), "finetune.pooling must be pooler, cls or mean")
        check(self.select in ("accuracy", "log_loss"),
              f"finetune.select must be accuracy or log_loss, got {self.select!r}")
        check(self.mlm_weight >= 0, "finetune.mlm_weight must be >= 0")
        check(self.fgm_epsilon >= 0, "finetune.fgm_epsilon must be >= 0")
        try:
            lrs = self.lr_grid
        except ValueError:
            raise ConfigError(f"finetune.learning_rates must be comma-separated numbers, got {self.learning_rates!r}")
        check(bool(lrs) and all(lr > 0 for lr in lrs), "finetune.learning_rates must be positive")

    @property
    def lr_grid(self) -> tuple[float, ...]:
        return tuple(float(x) for x in str(self.learning_rates).split(",") if x.strip())

    @property
    def probe_l2_grid(self) -> tuple[float, ...]:
        return tuple(float(x) for x in str(self.probe_l2).split(",") if x.strip())


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
        check(self.method in PEFT_METHODS, f"peft.method must be one of {', '.join(PEFT_METHODS)}, got {self.method!r}")
        check(self.frozen_dtype in DTYPES, f"peft.frozen_dtype must be one of {DTYPES}")
        check(self.rank >= 1 and self.init_rank >= 1 and self.adapter_size >= 1 and self.num_virtual_tokens >= 1,
               "peft.rank, peft.init_rank, peft.adapter_size and peft.num_virtual_tokens must be >= 1")
        check(1 <= self.target_rank <= self.init_rank,
               f"peft.target_rank must be in [1, init_rank={self.init_rank}], got {self.target_rank}")
        check(0.0 <= self.dropout < 1.0, "peft.dropout must be in [0, 1)")
        check(self.alpha > 0 and self.orth_reg >= 0 and self.adalora_delta_t >= 1,
               "peft.alpha > 0, peft.orth_reg >= 0 and peft.adalora_delta_t >= 1 are required")
        check(bool(self.target_list), "peft.targets is empty")

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
    # Also measure every point of the fine-tuning stage's lr grid on the test set (reported beside
    # its dev figures, never used to choose): how each selection rule would have done.
    grid_test: bool = False

    def __post_init__(self):
        try:
            ok = bool(self.head_lr_grid) and all(lr > 0 for lr in self.head_lr_grid)
        except ValueError:
            ok = False
        check(ok, f"eval.head_learning_rates must be comma-separated positive numbers, got {self.head_learning_rates!r}")
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
