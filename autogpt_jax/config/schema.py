"""Typed run configuration: one frozen dataclass per section, checks in ``__post_init__``.

Checks that need a layer above this one (template syntax, the registry of out-of-scope sources) run
where templates and datasets are built, before anything trains (``stages.preflight``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from autogpt_jax.config.pool import DistillConfig, SelftrainConfig
from autogpt_jax.config.recipe import (AdaptConfig, EvalConfig, FinetuneConfig, PeftConfig, PretrainConfig,
                                       PromptConfig)
from autogpt_jax.config.sections import (CheckpointConfig, DataConfig, LoggingConfig, MeshConfig, ModelConfig,
                                         SelectConfig, TaskConfig, check)
from autogpt_jax.config.support import HandoverConfig, RetrievalConfig

STAGES = ("pretrain", "prompt", "adapt", "finetune", "selftrain", "evaluate", "distill", "retrieval", "export")


@dataclasses.dataclass(frozen=True)
class Config:
    output_dir: str = "runs/default"
    seed: int = 0
    # Comma-separated subset of: pretrain,prompt,adapt,finetune,selftrain,evaluate,distill,retrieval,export.
    # null: the few-shot recipe when there is labelled data (prompt, adapt when there is unlabelled
    # text, finetune, evaluate, export), else pretrain.
    stages: Optional[str] = None
    # JAX's persistent compilation cache ($AUTOGPT_JAX_CACHE/xla, or JAX_COMPILATION_CACHE_DIR): a
    # later run reads the executables an earlier one compiled. false compiles everything afresh.
    compile_cache: bool = True
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    prompt: PromptConfig = dataclasses.field(default_factory=PromptConfig)
    adapt: AdaptConfig = dataclasses.field(default_factory=AdaptConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    peft: PeftConfig = dataclasses.field(default_factory=PeftConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    selftrain: SelftrainConfig = dataclasses.field(default_factory=SelftrainConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    handover: HandoverConfig = dataclasses.field(default_factory=HandoverConfig)
    retrieval: RetrievalConfig = dataclasses.field(default_factory=RetrievalConfig)
    select: SelectConfig = dataclasses.field(default_factory=SelectConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    # The dotted keys this config was given (its YAML file's and the command line's), filled by
    # config.cli.load_config; a selecting config forwards them to its candidates. Not a flag.
    given: tuple[str, ...] = dataclasses.field(default=(), metadata={"internal": True})

    def __post_init__(self):
        bad = [s for s in self.stage_list if s not in STAGES]
        check(not bad, f"unknown stage(s) {bad} in --stages; choose from {','.join(STAGES)}")
        check(bool(self.stage_list), "--stages is empty")
        check("adapt" not in self.stage_list or self.adapt.steps > 0,
              "the adapt stage runs adapt.steps steps, and adapt.steps is 0: set adapt.steps or drop adapt from --stages")
        check(not (self.finetune.fgm_epsilon > 0 and self.peft.method != "none"),
               "finetune.fgm_epsilon perturbs the trained word embeddings; with peft.method "
               f"{self.peft.method} they are frozen. Use one or the other")
        check("selftrain" not in self.stage_list or "finetune" in self.stage_list,
              "the selftrain stage labels the pool with the fine-tuned task model: add finetune to --stages")
        check(self.prompt.ensemble == 1 or "finetune" in self.stage_list,
              "prompt.ensemble fine-tunes each member: add finetune to --stages")
        check(not self.selftrain.ipet or self.prompt.ensemble >= 2,
              "selftrain.ipet retrains every prompt-ensemble member on the other members' labels: "
              f"set prompt.ensemble >= 2 (got {self.prompt.ensemble})")
        check(not self.handover.enabled or "evaluate" in self.stage_list,
               "handover.enabled calibrates the hand-over threshold in the evaluate stage; add evaluate to --stages")

    @property
    def stage_list(self) -> tuple[str, ...]:
        if self.stages is None:
            d = self.data
            if not (d.train_file or d.dataset):
                return ("pretrain",)
            adapt = ("adapt",) if (d.unlabeled_file or d.unlabeled) and self.adapt.steps > 0 else ()
            return ("prompt", *adapt, "finetune", "evaluate", "export")
        return tuple(s.strip() for s in self.stages.split(",") if s.strip())
