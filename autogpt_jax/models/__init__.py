"""Flax NNX models (BERT, GPT-2, Llama family) and their Hugging Face checkpoint I/O."""

from autogpt_jax.models.bert import Bert, BertConfig
from autogpt_jax.models.generation import generate
from autogpt_jax.models.gpt2 import GPT2, GPT2Config
from autogpt_jax.models.hf import LoadedModel, load_model, load_tokenizer, save_pretrained
from autogpt_jax.models.hub import resolve

__all__ = ["Bert", "BertConfig", "GPT2", "GPT2Config", "LoadedModel", "generate", "load_model", "load_tokenizer",
           "resolve", "save_pretrained"]
