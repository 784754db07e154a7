"""Typed run configuration: the sections (``sections``, ``recipe``, ``support``), the whole
(``schema``) and its command line (``cli``)."""

from autogpt_jax.config.cli import load_config, to_dict, valid_keys
from autogpt_jax.config.pool import DistillConfig, SelftrainConfig
from autogpt_jax.config.recipe import (FINETUNE_MODES, HEAD_MODES, PEFT_METHODS, AdaptConfig, EvalConfig, FinetuneConfig,
                                       PeftConfig, PretrainConfig, PromptConfig)
from autogpt_jax.config.schema import STAGES, Config
from autogpt_jax.config.sections import (DTYPES, CheckpointConfig, DataConfig, LoggingConfig, MeshConfig, ModelConfig,
                                         OptimConfig, SelectConfig, TaskConfig)
from autogpt_jax.config.support import HandoverConfig, RetrievalConfig
from autogpt_jax.errors import ConfigError

__all__ = ["DTYPES", "FINETUNE_MODES", "HEAD_MODES", "PEFT_METHODS", "TaskConfig", "STAGES", "AdaptConfig", "CheckpointConfig", "Config", "ConfigError",
           "DataConfig", "DistillConfig", "EvalConfig", "FinetuneConfig", "HandoverConfig", "LoggingConfig",
           "MeshConfig", "ModelConfig", "OptimConfig", "PeftConfig", "PretrainConfig", "PromptConfig",
           "RetrievalConfig", "SelectConfig", "SelftrainConfig", "load_config", "to_dict", "valid_keys"]
