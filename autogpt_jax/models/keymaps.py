"""The per-architecture rule tables (``HF key template ↔ our parameter path(s)``, with a named
transform) and ``map_weights``, which applies one to a checkpoint's tensors; ``hf.to_hf_state``
runs the same table backwards."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from autogpt_jax.errors import ModelLoadError
from autogpt_jax.models.bert import Bert, BertConfig
from autogpt_jax.models.gpt2 import GPT2, GPT2Config
from autogpt_jax.models.llama import Llama, LlamaConfig

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# declarative key maps
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Transform:
    name: str
    to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_hf: Callable[[tuple[np.ndarray, ...]], np.ndarray]


IDENTITY = Transform("identity", lambda x: (x,), lambda xs: xs[0])
# torch.nn.Linear stores (out, in); our kernels are (in, out).
TRANSPOSE = Transform("transpose", lambda x: (x.T,), lambda xs: xs[0].T)
# GPT-2's fused c_attn (Conv1D, (in, 3·out)) ↔ separate query/key/value.
SPLIT_QKV = Transform("split_qkv", lambda x: tuple(np.split(x, 3, axis=-1)), lambda xs: np.concatenate(xs, axis=-1))


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str  # template over normalised HF keys; "{i}" is a layer index
    ours: tuple[str, ...]  # our parameter path(s), same "{i}"
    transform: Transform = IDENTITY

    def hf_regex(self) -> re.Pattern:
        return re.compile(re.escape(self.hf).replace(r"\{i\}", r"(?P<i>\d+)") + "$")

    def ours_regex(self) -> re.Pattern:
        return re.compile(re.escape(self.ours[0]).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


def _linear(hf: str, ours: str, transform=TRANSPOSE) -> list[Rule]:
    return [Rule(f"{hf}.weight", (f"{ours}.kernel",), transform), Rule(f"{hf}.bias", (f"{ours}.bias",))]


def _norm(hf: str, ours: str) -> list[Rule]:
    return [Rule(f"{hf}.weight", (f"{ours}.scale",)), Rule(f"{hf}.bias", (f"{ours}.bias",))]


def _embed(hf: str, ours: str) -> list[Rule]:
    return [Rule(f"{hf}.weight", (f"{ours}.embedding",))]


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    model_type: str
    model_cls: type
    config_cls: type
    rules: tuple[Rule, ...]
    strip_prefixes: tuple[str, ...]  # wrappers removed from HF keys before matching ("bert.")
    ignore: tuple[str, ...]  # regexes of HF keys that hold no weights of ours (buffers, tied copies)
    optional: tuple[str, ...]  # our path prefixes a checkpoint may lack: initialised fresh, and logged
    # export architecture → (our path prefixes left out, HF prefix for the backbone keys)
    exports: dict[str, tuple[tuple[str, ...], str]]
    backbone_keys: tuple[str, ...]  # HF keys (normalised) that get the export prefix

    def normalise(self, key: str) -> str:
        for p in self.strip_prefixes:
            if key.startswith(p):
                key = key[len(p):]
                break
        # Old TF-converted BERT checkpoints name LayerNorm parameters gamma/beta.
        return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))


def _bert_rules() -> tuple[Rule, ...]:
    L = "encoder.layer.{i}"
    O = "layers.{i}"
    rules = [*_embed("embeddings.word_embeddings", "embeddings.word"),
             *_embed("embeddings.position_embeddings", "embeddings.position"),
             *_embed("embeddings.token_type_embeddings", "embeddings.token_type"),
             *_norm("embeddings.LayerNorm", "embeddings.norm")]
    for hf, ours in (("query", "query"), ("key", "key"), ("value", "value")):
        rules += _linear(f"{L}.attention.self.{hf}", f"{O}.attention.{ours}")
    rules += [*_linear(f"{L}.attention.output.dense", f"{O}.attention.out"),
              *_norm(f"{L}.attention.output.LayerNorm", f"{O}.attention_norm"),
              *_linear(f"{L}.intermediate.dense", f"{O}.intermediate"),
              *_linear(f"{L}.output.dense", f"{O}.output"),
              *_norm(f"{L}.output.LayerNorm", f"{O}.output_norm"),
              *_linear("pooler.dense", "pooler"),
              *_linear("cls.predictions.transform.dense", "mlm.transform"),
              *_norm("cls.predictions.transform.LayerNorm", "mlm.norm"),
              Rule("cls.predictions.bias", ("mlm.bias",)),
              *_linear("classifier", "classifier")]
    return tuple(rules)


def _llama_rules() -> tuple[Rule, ...]:
    L = "layers.{i}"
    O = "layers.{i}"
    rules = [*_embed("embed_tokens", "embed_tokens"),
             Rule(f"{L}.input_layernorm.weight", (f"{O}.input_norm.scale",)),
             Rule(f"{L}.post_attention_layernorm.weight", (f"{O}.post_attention_norm.scale",))]
    for hf, ours in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"), ("o_proj", "out")):
        rules += _linear(f"{L}.self_attn.{hf}", f"{O}.attention.{ours}")
    for hf, ours in (("gate_proj", "gate"), ("up_proj", "intermediate"), ("down_proj", "output")):
        rules += _linear(f"{L}.mlp.{hf}", f"{O}.{ours}")
    rules += [Rule("norm.weight", ("norm.scale",)), Rule("lm_head.weight", ("lm_head.kernel",), TRANSPOSE)]
    return tuple(rules)


def _llama_spec(model_type: str, architecture: str) -> "ArchSpec":
    return ArchSpec(model_type, Llama, LlamaConfig, _llama_rules(), ("model.",),
                    ignore=(r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
                    optional=(), exports={architecture: ((), "model.")},
                    backbone_keys=("embed_tokens.", "layers.", "norm."))


def _gpt2_rules() -> tuple[Rule, ...]:
    L = "h.{i}"
    O = "layers.{i}"
    qkv = tuple(f"{O}.attention.{n}" for n in ("query", "key", "value"))
    return (*_embed("wte", "wte"), *_embed("wpe", "wpe"),
            *_norm(f"{L}.ln_1", f"{O}.ln_1"),
            Rule(f"{L}.attn.c_attn.weight", tuple(f"{q}.kernel" for q in qkv), SPLIT_QKV),
            Rule(f"{L}.attn.c_attn.bias", tuple(f"{q}.bias" for q in qkv), SPLIT_QKV),
            *_linear(f"{L}.attn.c_proj", f"{O}.attention.out", IDENTITY),
            *_norm(f"{L}.ln_2", f"{O}.ln_2"),
            *_linear(f"{L}.mlp.c_fc", f"{O}.intermediate", IDENTITY),
            *_linear(f"{L}.mlp.c_proj", f"{O}.output", IDENTITY),
            *_norm("ln_f", "ln_f"))


ARCHS: dict[str, ArchSpec] = {
    "bert": ArchSpec(
        "bert", Bert, BertConfig, _bert_rules(), ("bert.",),
        ignore=(r"embeddings\.position_ids", r"cls\.predictions\.decoder\.(weight|bias)", r"cls\.seq_relationship\..*"),
        optional=("pooler.", "mlm.", "classifier."),
        exports={"BertForMaskedLM": (("pooler.", "classifier."), "bert."),
                 "BertModel": (("mlm.", "classifier."), ""),
                 "BertForSequenceClassification": (("mlm.",), "bert.")},
        backbone_keys=("embeddings.", "encoder.", "pooler."),
    ),
    "gpt2": ArchSpec(
        "gpt2", GPT2, GPT2Config, _gpt2_rules(), ("transformer.",),
        ignore=(r"h\.\d+\.attn\.(bias|masked_bias)", r"lm_head\.weight"),
        optional=(),
        exports={"GPT2LMHeadModel": ((), "transformer."), "GPT2Model": ((), "")},
        backbone_keys=("wte.", "wpe.", "h.", "ln_f."),
    ),
    "llama": _llama_spec("llama", "LlamaForCausalLM"),
    "qwen2": _llama_spec("qwen2", "Qwen2ForCausalLM"),
    "mistral": _llama_spec("mistral", "MistralForCausalLM"),
}


def arch_for(hf_config: dict[str, Any], where: Path | str) -> ArchSpec:
    mt = hf_config.get("model_type")
    if mt not in ARCHS:
        raise ModelLoadError(f"{where}/config.json: model_type {mt!r} is not supported; "
                             f"supported model types: {sorted(ARCHS)}")
    return ARCHS[mt]


def map_weights(spec: ArchSpec, weights: dict[str, np.ndarray], expected: dict[str, jax.ShapeDtypeStruct],
                source: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Our path → array for every tensor in ``weights``. Raises one error listing every problem."""
    compiled = [(r, r.hf_regex()) for r in spec.rules]
    ignore = [re.compile(p + "$") for p in spec.ignore]
    values: dict[str, np.ndarray] = {}
    seen: set[str] = set()  # targets that had a tensor, even a wrong one (reported once, not also as missing)
    problems: list[str] = []
    unexpected: list[str] = []
    for raw_key, arr in weights.items():
        key = spec.normalise(raw_key)
        if any(p.match(key) for p in ignore):
            continue
        for rule, rx in compiled:
            m = rx.match(key)
            if m:
                break
        else:
            unexpected.append(raw_key)
            continue
        fmt = m.groupdict()
        targets = [t.format(**fmt) for t in rule.ours]
        if any(t not in expected for t in targets):
            unexpected.append(raw_key)
            continue
        seen.update(targets)
        try:
            parts = rule.transform.to_ours(np.asarray(arr))
        except Exception as e:
            problems.append(f"{raw_key}: shape {tuple(arr.shape)} cannot be {rule.transform.name}d ({e})")
            continue
        for t, part in zip(targets, parts):
            want = tuple(expected[t].shape)
            if tuple(part.shape) != want:
                problems.append(f"{raw_key}: shape {tuple(arr.shape)} gives {tuple(part.shape)} after "
                                f"{rule.transform.name}, but {t} needs {want} (from config.json)")
            else:
                values[t] = part
    missing = [p for p in expected if p not in seen and not p.startswith(spec.optional)]
    problems += [f"missing weight for {p}" for p in missing]
    if problems:
        raise ModelLoadError(f"{source}: {len(problems)} problem(s) loading weights:\n  - " + "\n  - ".join(problems))
    if unexpected:
        log.warning("%s: %d tensor(s) not used: %s", source, len(unexpected), ", ".join(unexpected[:10]))
    return values, unexpected


def check_untied(spec: ArchSpec, hf_config: dict, weights: dict[str, np.ndarray], source: Path):
    if spec.model_type == "bert":
        dec = weights.get("cls.predictions.decoder.weight")
        emb = weights.get("bert.embeddings.word_embeddings.weight")
        if dec is not None and emb is not None and hf_config.get("tie_word_embeddings", True) is False \
                and not np.array_equal(np.asarray(dec), np.asarray(emb)):
            raise ModelLoadError(f"{source}: cls.predictions.decoder.weight is not tied to the word embeddings; "
                                 "untied MLM decoders are not supported")
