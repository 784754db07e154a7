"""The config sections of the stages that label the unlabelled pool: selftrain and distill."""

from __future__ import annotations

import dataclasses
from typing import Optional

from autogpt_jax.config.sections import OptimConfig, check


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Stage ``distill``: the fine-tuned model (teacher) soft-labels the unlabelled task pool, and a
    small student with a classification head learns those labels (plus the K-shot examples' own),
    for fast serving. Exported to ``export/student/``."""

    student: str = "minilm-l6"
    # The teacher: "ensemble", the prompt ensemble when the run built one (prompt.ensemble > 1; it
    # stays the teacher after selftrain replaced the task model with its last student), else the
    # task model; "final", always the task model as exported.
    teacher: str = "ensemble"
    steps: int = 300
    batch_size: int = 32
    # Unlabelled texts the teacher labels: the task's whole pool (data.unlabeled, or the labelled
    # pool with its labels dropped), at most this many (null: all). The labels are cached per
    # (teacher, pool): after a selftrain stage whose teacher is the same model, none are computed again.
    max_unlabeled: Optional[int] = None
    # Teacher logits are divided by this before the softmax (soft targets).
    temperature: float = 1.0
    max_length: int = 64
    pooling: str = "mean"
    eval_every: int = 50
    # The student step kept (evaluated every eval_every steps): "agreement", the step whose
    # predictions agree most with the teacher's on `holdout` pool texts the student does not train
    # on (at most a fifth of the pool: a thousand examples, where the 2K dev examples move in steps
    # of 1/|dev|); "dev", the best dev accuracy; "last", the last step.
    select: str = "agreement"
    holdout: int = 1000
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(learning_rate=5e-5, warmup_steps=30))

    def __post_init__(self):
        check(self.steps >= 1 and self.batch_size >= 1 and (self.max_unlabeled or 1) >= 1 and self.eval_every >= 1,
               "distill.steps, batch_size, max_unlabeled and eval_every must be >= 1")
        check(self.select in ("agreement", "dev", "last"),
              f"distill.select must be agreement, dev or last, got {self.select!r}")
        check(self.teacher in ("ensemble", "final"), f"distill.teacher must be ensemble or final, got {self.teacher!r}")
        check(self.holdout >= 1 or self.select != "agreement",
              f"distill.select agreement needs distill.holdout >= 1, got {self.holdout}")
        check(self.temperature > 0, f"distill.temperature must be > 0, got {self.temperature}")
        check(self.pooling in ("cls", "mean", "pooler"), f"distill.pooling must be cls, mean or pooler, got {self.pooling!r}")



@dataclasses.dataclass(frozen=True)
class SelftrainConfig:
    """Stage ``selftrain`` (iPET / noisy student): the task model (the ensemble, when there is one)
    labels the unlabelled pool; the most confident pool texts of each class above `threshold` join
    the K labelled examples with soft labels at `temperature`; a student learns them (noised), and
    becomes the next generation's teacher. The student is the run's own backbone, started from the
    weights fine-tuning started from; a smaller student is the distill stage's."""

    generations: int = 1
    # Pseudo-labelled texts per class in generation 1; each generation keeps `growth` times as many
    # (iPET: 5). Class-balanced: every class gets the same number (fewer when fewer pass the threshold).
    per_class: int = 32
    growth: float = 5.0
    # Teacher confidence (max class probability) a pool text needs.
    threshold: float = 0.9
    # When the weakest class has fewer than this many pool texts above `threshold`, every class
    # keeps its this-many most confident predictions instead (PET's per-class ranking), with a
    # warning; 0: an error when a class has none above the threshold.
    min_per_class: int = 16
    # Soft labels: the teacher's logits divided by this before the softmax (PET: 2). 0: hard labels.
    temperature: float = 2.0
    # Pool texts the teacher labels, at most (null: the whole pool).
    max_unlabeled: Optional[int] = None
    # Noise on the student's pseudo-labelled inputs: word dropout at this rate (0: none), besides the
    # model's dropout.
    word_dropout: float = 0.1
    # Joint loss L = L_task + mlm_weight · L_mlm / L_clm on the unlabelled text (0: off).
    mlm_weight: float = 0.0
    # UDA consistency training: + consistency_weight · KL(p(clean) ‖ p(word-dropped)) on the pool
    # texts (each step a batch of them in both views; about twice the step's compute). 0: off.
    consistency_weight: float = 0.0
    # Training steps per generation (null: finetune.steps scaled by the data growth, at most 4×).
    steps: Optional[int] = None
    # Learning rates of the student (null: the one fine-tuning chose on dev; with ipet, each
    # member's own).
    learning_rates: Optional[str] = None
    # iPET (Schick & Schütze 2021): every generation retrains each prompt-ensemble member (its own
    # template, label words and seed, from the weights fine-tuning started from) on the pool texts
    # the ensemble of the *other* members labels, and the task model is the ensemble of the new
    # members: labels never come from a single student. Needs prompt.ensemble >= 2; each generation
    # costs one fine-tuning per member. false: one student per generation, taught by the last.
    ipet: bool = False
    # The task model after the stage (evaluated, exported, served): "best", whichever of the stage's
    # teacher (the ensemble or the fine-tuned model: generation 0) and its generations has the best
    # dev accuracy, ties to the lower dev log-loss, then to the earlier (on MR the decoder's
    # students scored 1.3-3.4 points under the ensemble that taught them on every seed); "last",
    # the last generation.
    keep: str = "best"

    def __post_init__(self):
        check(self.generations >= 1, f"selftrain.generations must be >= 1, got {self.generations}")
        check(self.keep in ("best", "last"), f"selftrain.keep must be best or last, got {self.keep!r}")
        check(self.per_class >= 1 and self.growth >= 1.0, "selftrain.per_class must be >= 1 and selftrain.growth >= 1")
        check(0.0 <= self.threshold < 1.0, f"selftrain.threshold must be in [0, 1), got {self.threshold}")
        check(self.min_per_class >= 0, f"selftrain.min_per_class must be >= 0, got {self.min_per_class}")
        check(self.temperature >= 0, f"selftrain.temperature must be >= 0, got {self.temperature}")
        check(0.0 <= self.word_dropout < 1.0, f"selftrain.word_dropout must be in [0, 1), got {self.word_dropout}")
        check(self.mlm_weight >= 0 and self.consistency_weight >= 0,
              "selftrain.mlm_weight and selftrain.consistency_weight must be >= 0")
        check(self.steps is None or self.steps >= 1, "selftrain.steps must be >= 1 or null")
        check(self.max_unlabeled is None or self.max_unlabeled >= 1, "selftrain.max_unlabeled must be >= 1 or null")
        try:
            ok = all(lr > 0 for lr in self.lr_grid)
        except ValueError:
            ok = False
        check(ok, f"selftrain.learning_rates must be comma-separated positive numbers, got {self.learning_rates!r}")

    @property
    def lr_grid(self) -> tuple[float, ...]:
        return tuple(float(x) for x in str(self.learning_rates or "").split(",") if x.strip())

    def kept_per_class(self, generation: int) -> int:
        """Pseudo-labelled texts per class in ``generation`` (1-based)."""
        return int(round(self.per_class * self.growth ** (generation - 1)))
