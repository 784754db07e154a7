"""Weight formats named in the README: GGUF tensor types (F16, BF16, Q8_0, Q4_0, Q4_1) against the
``gguf`` package's own dequantisation, the ``mistral`` model_type against PyTorch, and sharded
Hugging Face checkpoints (safetensors and pytorch_model.bin indexes)."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from autogpt_jax.errors import ModelLoadError
from autogpt_jax.models import hf
from test_llama import _write_gguf


def _params(model) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _decoder_logits(model, ids, mask=None):
    h, _ = model(jnp.asarray(ids), None if mask is None else jnp.asarray(mask))
    return np.asarray(model.logits(h))


# --------------------------------------------------------------------------------------------
# GGUF tensor types
# --------------------------------------------------------------------------------------------


def _gguf_roundtrip(v: np.ndarray, qtype: str) -> np.ndarray:
    """What a GGUF tensor of ``qtype`` holding ``v`` means, by the gguf package itself."""
    import gguf

    if v.ndim != 2:  # _write_gguf keeps norms (vectors) in F32
        return v
    if qtype == "F16":
        return v.astype(np.float16).astype(np.float32)
    q = getattr(gguf.GGMLQuantizationType, qtype)
    return gguf.quants.dequantize(gguf.quants.quantize(v, q), q).reshape(v.shape)


@pytest.fixture(scope="module")
def llama_f32(tiny_llama_dir):
    lm = hf.load_model(tiny_llama_dir)
    ids = np.random.default_rng(1).integers(3, 1000, (2, 9))
    return lm, ids, _decoder_logits(lm.model, ids)


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_gguf_tensor_type_loads_exactly_as_gguf_dequantises_it(qtype, tiny_llama_dir, llama_f32, tmp_path):
    """Every matrix of the file stored as ``qtype``: our weights equal gguf.quants.dequantize of the
    very bytes written (in Hugging Face layout), and the logits equal those of a safetensors model
    holding those dequantised weights. Llama q/k are written permuted (as llama.cpp does); the
    reference needs no un-permutation because quantisation blocks lie along rows, which the
    permutation only reorders."""
    import gguf

    lm32, ids, logits32 = llama_f32
    path = _write_gguf(tmp_path / f"tiny.{qtype}.gguf", tiny_llama_dir, qtype=qtype)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == types["output.weight"] == qtype
    assert types["blk.0.attn_norm.weight"] == "F32"

    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    shutil.copy(tiny_llama_dir / "config.json", ref_dir)
    from safetensors.numpy import save_file

    weights, _ = hf.read_weights(tiny_llama_dir)
    save_file({k: np.ascontiguousarray(_gguf_roundtrip(np.asarray(v, np.float32), qtype)) for k, v in weights.items()},
              str(ref_dir / "model.safetensors"))
    ref = hf.load_model(ref_dir).model
    ours = hf.load_model(path)
    assert ours.path == path and ours.config.model_type == "llama"

    got, want, orig = _params(ours.model), _params(ref), _params(lm32.model)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{qtype}: {k}")
    # The file really held lossy tensors: the weights moved by that type's rounding error.
    err_w = max(float(np.abs(got[k] - orig[k]).max()) for k in orig)
    assert err_w > {"F16": 1e-6, "BF16": 1e-5, "Q8_0": 1e-4, "Q4_0": 1e-3, "Q4_1": 1e-3}[qtype], (qtype, err_w)

    logits = _decoder_logits(ours.model, ids)
    np.testing.assert_allclose(logits, _decoder_logits(ref, ids), atol=1e-5, rtol=0)
    assert np.abs(logits - logits32).max() > 0  # and the model they give is not the float32 one


# --------------------------------------------------------------------------------------------
# mistral
# --------------------------------------------------------------------------------------------


def _save_tiny_mistral(out, **cfg_kw):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("mistral", vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                               rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1,
                               eos_token_id=2, pad_token_id=2, **cfg_kw)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # random norms too, so their loading is tested
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out)
    return model


def _torch_logits(model, ids, mask):
    import torch

    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory):
    out = tmp_path_factory.mktemp("mistral_random")
    return out, _save_tiny_mistral(out, sliding_window=None)


def test_mistral_safetensors_matches_pytorch(tiny_mistral):
    path, pt = tiny_mistral
    assert json.loads((path / "config.json").read_text())["architectures"] == ["MistralForCausalLM"]
    lm = hf.load_model(path)
    assert (lm.config.model_type, lm.config.num_kv_heads, lm.config.tie_word_embeddings) == ("mistral", 2, False)
    ids = np.random.default_rng(0).integers(3, 1000, (2, 11))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    ours = _decoder_logits(lm.model, ids, mask)
    ref = _torch_logits(pt, ids, mask)
    np.testing.assert_allclose(ours[0], ref[0], atol=1e-4)
    np.testing.assert_allclose(ours[1, :7], ref[1, :7], atol=1e-4)


def test_mistral_sliding_window_config_is_refused_clearly(tiny_mistral, tmp_path):
    path, _ = tiny_mistral
    d = tmp_path / "swa"
    shutil.copytree(path, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(sliding_window=4, use_sliding_window=True)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"config\.json: cannot build a mistral config \(ValueError: "
                                             r"sliding-window attention \(sliding_window=4\) is not supported\)"):
        hf.load_model(d)


def test_mistral_window_without_a_switch_is_refused(tmp_path):
    _save_tiny_mistral(tmp_path, sliding_window=4)
    assert "use_sliding_window" not in json.loads((tmp_path / "config.json").read_text())
    # Mistral has no use_sliding_window switch: a window shorter than the context is refused
    # (loading it with full attention would disagree with PyTorch past the window).
    with pytest.raises(ModelLoadError, match=r"sliding-window attention \(sliding_window=4\) is not supported"):
        hf.load_model(tmp_path)


# --------------------------------------------------------------------------------------------
# sharded Hugging Face checkpoints
# --------------------------------------------------------------------------------------------


def _bert_outputs(model):
    ids = np.random.default_rng(0).integers(1000, 5000, (2, 10))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    h = model(jnp.asarray(ids), jnp.asarray(mask))
    return np.asarray(h), np.asarray(model.mlm_logits(h.reshape(-1, h.shape[-1])))


@pytest.fixture(scope="module")
def bert_unsharded(tiny_bert_dir):
    lm = hf.load_model(tiny_bert_dir)
    weights, src = hf.read_weights(tiny_bert_dir)
    assert src.name == "model.safetensors"
    return lm, {k: np.ascontiguousarray(np.asarray(v)) for k, v in weights.items()}


def _split(weights):
    """Alternate keys between two shards, so that both are needed for every layer."""
    keys = sorted(weights)
    return {k: f"model-0000{1 + i % 2}-of-00002" for i, k in enumerate(keys)}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_checkpoint_loads_like_the_unsharded_one(fmt, tiny_bert_dir, bert_unsharded, tmp_path):
    lm, weights = bert_unsharded
    shutil.copy(tiny_bert_dir / "config.json", tmp_path)
    ext = ".safetensors" if fmt == "safetensors" else ".bin"
    weight_map = {k: v + ext for k, v in _split(weights).items()}
    for shard in sorted(set(weight_map.values())):
        part = {k: weights[k] for k, f in weight_map.items() if f == shard}
        if fmt == "safetensors":
            from safetensors.numpy import save_file

            save_file(part, str(tmp_path / shard), metadata={"format": "pt"})
        else:
            import torch

            torch.save({k: torch.from_numpy(v.copy()) for k, v in part.items()}, tmp_path / shard)
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (tmp_path / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    assert not (tmp_path / "model.safetensors").exists() and not (tmp_path / "pytorch_model.bin").exists()

    read, src = hf.read_weights(tmp_path)
    assert src.name == index and read.keys() == weights.keys()
    sharded = hf.load_model(tmp_path)
    assert sharded.fresh == lm.fresh
    got, want = _params(sharded.model), _params(lm.model)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    for a, b in zip(_bert_outputs(sharded.model), _bert_outputs(lm.model)):
        np.testing.assert_array_equal(a, b)

    # A shard named by the index but absent is reported by name.
    (tmp_path / sorted(set(weight_map.values()))[1]).unlink()
    with pytest.raises(ModelLoadError, match=r"names shard 'model-00002-of-00002" + ext.replace(".", r"\.")
                                             + r"', which is missing"):
        hf.load_model(tmp_path)
