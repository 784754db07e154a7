"""Checkpoint formats in, Hugging Face directories out, and clear errors for bad checkpoints."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from autogpt_jax.errors import ModelLoadError, ModelNotFoundError
from autogpt_jax.models import load_model, resolve, save_pretrained
from autogpt_jax.models.weights import read_weights


def _bert_logits(model, ids, mask):
    h = model(jnp.asarray(ids), jnp.asarray(mask))
    return np.asarray(model.mlm_logits(h.reshape(-1, h.shape[-1]))).reshape(*ids.shape, -1)


def test_bert_mlm_export_loads_in_pytorch(splade_dir, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    lm = load_model(splade_dir)
    out = save_pretrained(lm.model, tmp_path / "export", tokenizer=lm.tokenizer())
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / f).exists(), f
    tok = AutoTokenizer.from_pretrained(str(out))
    enc = tok(["a gripping, well acted thriller.", "boring"], padding=True, return_tensors="np")
    pt = AutoModelForMaskedLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        ref = pt(input_ids=torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"])).logits.numpy()
    ours = _bert_logits(lm.model, enc["input_ids"], enc["attention_mask"])
    real = enc["attention_mask"].astype(bool)
    assert np.abs(ours[real] - ref[real]).max() < 1e-4


@pytest.mark.slow
def test_minilm_export_with_fresh_head_round_trips(minilm_dir, tmp_path):
    """MiniLM has no MLM head: we initialise one, and the export must carry it to PyTorch intact."""
    from transformers import AutoModelForMaskedLM

    lm = load_model(minilm_dir)
    assert any(p.startswith("mlm.") for p in lm.fresh)
    out = save_pretrained(lm.model, tmp_path / "export", tokenizer=lm.tokenizer())
    ids = np.array([[101, 1996, 3185, 2001, 103, 1012, 102]])
    mask = np.ones_like(ids)
    pt = AutoModelForMaskedLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        ref = pt(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    assert np.abs(_bert_logits(lm.model, ids, mask) - ref).max() < 1e-4
    again = load_model(out)  # and back into JAX, now with no fresh parameters except the pooler
    assert all(p.startswith("pooler.") for p in again.fresh)
    np.testing.assert_allclose(_bert_logits(again.model, ids, mask), _bert_logits(lm.model, ids, mask), atol=1e-5)


def test_gpt2_export_loads_in_pytorch(gpt2_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = load_model(gpt2_dir)
    out = save_pretrained(lm.model, tmp_path / "export")
    ids = np.random.default_rng(0).integers(0, 1000, size=(2, 11))
    pt = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        ref = pt(input_ids=torch.tensor(ids)).logits.numpy()
    h, _ = lm.model(jnp.asarray(ids))
    assert np.abs(np.asarray(lm.model.logits(h)) - ref).max() < 1e-4


def test_classifier_export_loads_as_sequence_classification(tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    lm = load_model(tiny_bert_dir, num_labels=3)
    assert {p.split(".")[0] for p in lm.fresh} == {"pooler", "classifier"}
    out = save_pretrained(lm.model, tmp_path / "cls", labels=["neg", "neu", "pos"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"] and cfg["id2label"]["2"] == "pos"
    ids = np.array([[101, 2307, 3185, 102]])
    pt = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        ref = pt(input_ids=torch.tensor(ids)).logits.numpy()
    h = lm.model(jnp.asarray(ids))
    ours = np.asarray(lm.model.classify(h, jnp.ones_like(jnp.asarray(ids))))
    assert np.abs(ours - ref).max() < 1e-5


def test_pytorch_bin_and_prefixless_keys(tiny_bert_dir, tmp_path):
    """pytorch_model.bin (read without torch), with the bare BertModel key layout."""
    from transformers import BertModel

    d = tmp_path / "bin"
    d.mkdir()
    shutil.copy(tiny_bert_dir / "config.json", d)
    base = BertModel.from_pretrained(str(tiny_bert_dir)).eval()
    torch.save(base.state_dict(), d / "pytorch_model.bin")
    weights, src = read_weights(d)
    assert src.name == "pytorch_model.bin" and "encoder.layer.0.attention.self.query.weight" in weights
    ids = np.array([[101, 7592, 2088, 102, 0]])
    mask = (ids > 0).astype(np.int64)
    with torch.no_grad():
        ref = base(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    ours = np.asarray(load_model(d).model(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(ours[:, :4] - ref[:, :4]).max() < 1e-5


def test_flax_msgpack_and_gamma_beta_names(tiny_bert_dir, tmp_path):
    """HF Flax layout (kernel (in,out), embedding, scale) and old gamma/beta LayerNorm names."""
    from flax.serialization import msgpack_serialize
    from transformers import BertForMaskedLM

    pt = BertForMaskedLM.from_pretrained(str(tiny_bert_dir)).eval()
    tree: dict = {}
    for k, v in pt.state_dict().items():
        if k.startswith("cls.predictions.decoder") or "position_ids" in k:
            continue
        parts = k.split(".")
        arr = v.numpy()
        if parts[-1] == "weight":
            if "LayerNorm" in parts:
                parts[-1] = "gamma"  # TF-era name, which the loader must map
            elif "embeddings" in parts[-2]:
                parts[-1] = "embedding"
            else:
                parts[-1], arr = "kernel", arr.T
        elif parts[-1] == "bias" and "LayerNorm" in parts:
            parts[-1] = "beta"
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = arr
    d = tmp_path / "flax"
    d.mkdir()
    shutil.copy(tiny_bert_dir / "config.json", d)
    (d / "flax_model.msgpack").write_bytes(msgpack_serialize(tree))
    ids = np.array([[101, 7592, 2088, 103, 102]])
    with torch.no_grad():
        ref = pt(input_ids=torch.tensor(ids)).logits.numpy()
    ours = _bert_logits(load_model(d).model, ids, np.ones_like(ids))
    assert np.abs(ours - ref).max() < 1e-4


# ---- bad input: one clear error naming the file and the key ------------------------------------------


def test_directory_without_weights(tiny_bert_dir, tmp_path):
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(tiny_bert_dir / "config.json", d)
    with pytest.raises(ModelLoadError, match=r"noweights: no weights found.*model\.safetensors"):
        load_model(d)


def test_unsupported_model_type(tiny_bert_dir, tmp_path):
    d = tmp_path / "t5"
    shutil.copytree(tiny_bert_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "t5"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"t5/config\.json: model_type 't5' is not supported.*bert.*gpt2"):
        load_model(d)


def test_wrong_shapes_reported_together(tiny_bert_dir, tmp_path):
    from safetensors.numpy import save_file

    d = tmp_path / "badshape"
    shutil.copytree(tiny_bert_dir, d)
    w = {k: np.array(v) for k, v in read_weights(tiny_bert_dir)[0].items()}
    w["bert.encoder.layer.1.attention.self.key.weight"] = np.zeros((32, 16), np.float32)
    w["bert.embeddings.position_embeddings.weight"] = np.zeros((10, 32), np.float32)
    save_file(w, str(d / "model.safetensors"))
    with pytest.raises(ModelLoadError) as e:
        load_model(d)
    msg = str(e.value)
    assert "model.safetensors: 2 problem(s)" in msg
    assert "bert.encoder.layer.1.attention.self.key.weight: shape (32, 16)" in msg
    assert "layers.1.attention.key.kernel needs (32, 32)" in msg
    assert "bert.embeddings.position_embeddings.weight" in msg


def test_missing_required_weight(tiny_bert_dir, tmp_path):
    from safetensors.numpy import save_file

    d = tmp_path / "missing"
    shutil.copytree(tiny_bert_dir, d)
    w = {k: np.array(v) for k, v in read_weights(tiny_bert_dir)[0].items()
         if k != "bert.encoder.layer.0.output.dense.weight"}
    save_file(w, str(d / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"missing weight for layers\.0\.output\.kernel"):
        load_model(d)


def test_truncated_safetensors(tiny_bert_dir, tmp_path):
    d = tmp_path / "trunc"
    shutil.copytree(tiny_bert_dir, d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="runs past the end of the file"):
        load_model(d)


def test_unknown_names_fail_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        resolve("./does/not/exist")
    with pytest.raises(ModelNotFoundError, match=r"model '/nope/m.Q4_1.gguf': no such file.*a \.gguf file"):
        resolve("/nope/m.Q4_1.gguf")
    with pytest.raises(ModelNotFoundError, match=r"packaged short name.*minilm-l6.*offline"):
        resolve("someone/some-model")
