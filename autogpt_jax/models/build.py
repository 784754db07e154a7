"""The backbone of a run: loaded (sharded, straight onto the mesh) or created from scratch.

The encoder/decoder choice is made here, once: every model class declares its ``kind``
(``encoder``: BERT family, fills a mask; ``decoder``: GPT-2 and Llama families, predicts the next
token) and its ``max_positions``; code above asks :func:`kind` / :func:`is_decoder`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogpt_jax.config import ModelConfig
from autogpt_jax.errors import ConfigError
from autogpt_jax.models import hf
from autogpt_jax.models.bert import Bert, BertConfig
from autogpt_jax.models.gpt2 import GPT2, GPT2Config
from autogpt_jax.models.llama import Llama, LlamaConfig
from autogpt_jax.models.scan import stack_layers, wants_scan

KINDS = ("encoder", "decoder")

# config.json model_type -> the dropout keys ``model.dropout`` sets
_DROPOUT_KEYS = {"bert": ("hidden_dropout", "attention_dropout"),
                 "gpt2": ("resid_dropout", "embd_dropout", "attention_dropout")}


def kind(model: nnx.Module) -> str:
    """``encoder`` or ``decoder``."""
    return model.kind


def is_decoder(model: nnx.Module) -> bool:
    """Causal LMs (GPT-2, Llama) predict the label word as the next token; encoders fill a mask."""
    return model.kind == "decoder"


def max_positions(model: nnx.Module) -> int:
    return model.max_positions


def param_count(model: nnx.Module) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def dtype_of(name: str):
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A built model and what the stages need to know about it."""

    model: nnx.Module
    tokenizer: Any
    source: str  # the resolved checkpoint path, or scratch:<arch>
    fresh: tuple[str, ...]  # parameter paths initialised fresh ("*": all of them)

    @property
    def kind(self) -> str:
        return kind(self.model)

    @property
    def head_fresh(self) -> bool:
        """The LM head (MLM head of an encoder) was not in the checkpoint."""
        return any(p.startswith("mlm.") or p == "*" for p in self.fresh)


def build_model(mc: ModelConfig, *, seed: int, num_labels: int = 0,
                sharding: Callable[[nnx.Variable], jax.sharding.Sharding]) -> Backbone:
    """Load ``mc.name_or_path`` or create ``mc.arch`` from scratch, each parameter born on the
    sharding ``sharding(variable)`` gives it (the mesh's rules table)."""
    dtype = dtype_of(mc.dtype)
    if mc.name_or_path:
        hf_cfg = hf.read_config(hf.resolve(mc.name_or_path))
        overrides = {}
        if mc.dropout is not None:
            overrides = {k: mc.dropout for k in _DROPOUT_KEYS.get(hf_cfg.get("model_type"), ("attention_dropout",))}
        lm = hf.load_model(mc.name_or_path, dtype=dtype, seed=seed, config_overrides=overrides,
                           num_labels=num_labels, shardings=lambda key, shape, var: sharding(var))
        tok = hf.load_tokenizer(hf.resolve(mc.tokenizer)) if mc.tokenizer else lm.tokenizer()
        if wants_scan(lm.model, mc.scan_layers):
            stack_layers(lm.model, sharding)
        return Backbone(lm.model, tok, str(lm.path), tuple(lm.fresh))
    tok = hf.load_tokenizer(hf.resolve(mc.tokenizer))
    drop = 0.1 if mc.dropout is None else mc.dropout
    if mc.arch == "bert":
        mcfg = BertConfig(vocab_size=len(tok), hidden_size=mc.hidden_size, num_layers=mc.num_layers,
                          num_heads=mc.num_heads, intermediate_size=mc.intermediate_size,
                          max_position_embeddings=mc.max_positions, hidden_dropout=drop, attention_dropout=drop,
                          pad_token_id=tok.pad_token_id or 0, num_labels=num_labels)
        cls = Bert
    elif mc.arch == "gpt2":
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        mcfg = GPT2Config(vocab_size=len(tok), n_positions=mc.max_positions, hidden_size=mc.hidden_size,
                          num_layers=mc.num_layers, num_heads=mc.num_heads, intermediate_size=mc.intermediate_size,
                          resid_dropout=drop, embd_dropout=drop, attention_dropout=drop,
                          bos_token_id=eos, eos_token_id=eos)
        cls = GPT2
    elif mc.arch == "llama":
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        bos = tok.bos_token_id if tok.bos_token_id is not None else eos
        mcfg = LlamaConfig(vocab_size=len(tok), hidden_size=mc.hidden_size, intermediate_size=mc.intermediate_size,
                           num_layers=mc.num_layers, num_heads=mc.num_heads, num_kv_heads=mc.num_heads,
                           max_position_embeddings=mc.max_positions, attention_dropout=drop,
                           bos_token_id=bos, eos_token_id=eos)
        cls = Llama
    else:
        raise ConfigError(f"model.arch {mc.arch!r}: choose bert, gpt2 or llama")
    ctor = lambda: cls(mcfg, rngs=nnx.Rngs(seed), dtype=dtype)  # noqa: E731
    graphdef, abstract = nnx.split(nnx.eval_shape(ctor))
    shardings = jax.tree.map(sharding, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))
    # Born sharded: the initialiser runs under jit with each parameter's sharding as its output.
    state = jax.jit(lambda: nnx.state(ctor()), out_shardings=shardings)()
    model = nnx.merge(graphdef, state)
    if wants_scan(model, mc.scan_layers):
        stack_layers(model, sharding)
    return Backbone(model, tok, f"scratch:{mc.arch}", ("*",))
