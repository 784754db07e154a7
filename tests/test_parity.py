"""Golden parity of our Flax models against PyTorch transformers (float32), with the layers
unrolled and scanned (``model.scan_layers``; auto-on from 12 layers)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from autogpt_jax.models import load_model as _load_model
from autogpt_jax.models.scan import is_stacked, stack_layers

SCAN = pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])


def load_model(path, scan_layers: bool = False, **kw):
    lm = _load_model(path, **kw)
    if scan_layers:
        stack_layers(lm.model)
        assert is_stacked(lm.model)
    return lm

TEXTS = [
    "the film is a charming, funny and moving portrait of a family.",
    "dull.",
    "an utterly tedious and overlong mess with no redeeming qualities, despite a game cast and a few good jokes.",
]


def _encode(tok, texts):
    return tok(texts, padding=True, return_tensors="np")


def _torch(enc):
    return {k: torch.tensor(v) for k, v in enc.items()}


@pytest.mark.slow
@SCAN
def test_minilm_hidden_states_match_pytorch(minilm_dir, scan_layers):
    from transformers import AutoModel

    lm = load_model(minilm_dir, scan_layers)
    assert [p for p in lm.fresh if not p.startswith("mlm.")] == []  # only the absent MLM head is fresh
    enc = _encode(lm.tokenizer(), TEXTS)
    ours = np.asarray(lm.model(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]),
                               jnp.asarray(enc["token_type_ids"])))
    with torch.no_grad():
        ref = AutoModel.from_pretrained(str(minilm_dir)).eval()(**_torch(enc)).last_hidden_state.numpy()
    real = enc["attention_mask"].astype(bool)
    assert np.abs(ours[real] - ref[real]).max() < 1e-4
    # The pooler is real in this checkpoint, so pooler output must match too.
    with torch.no_grad():
        ref_pool = AutoModel.from_pretrained(str(minilm_dir)).eval()(**_torch(enc)).pooler_output.numpy()
    ours_pool = np.asarray(lm.model.pool(jnp.asarray(ours), jnp.asarray(enc["attention_mask"]), "pooler"))
    assert np.abs(ours_pool - ref_pool).max() < 1e-4


@pytest.mark.slow  # real pretrained weights
@SCAN
def test_splade_mlm_logits_match_pytorch(splade_dir, scan_layers):
    from transformers import AutoModelForMaskedLM

    lm = load_model(splade_dir, scan_layers)
    assert lm.fresh == [p for p in lm.fresh if p.startswith("pooler.")]  # MLM head came from the file
    enc = _encode(lm.tokenizer(), TEXTS)
    h = lm.model(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]), jnp.asarray(enc["token_type_ids"]))
    real = enc["attention_mask"].astype(bool)
    ours = np.asarray(lm.model.mlm_logits(h[jnp.asarray(real)]))
    with torch.no_grad():
        ref = AutoModelForMaskedLM.from_pretrained(str(splade_dir)).eval()(**_torch(enc)).logits.numpy()[real]
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-3
    # Logits restricted to a few vocabulary rows equal the same columns of the full projection.
    ids = jnp.asarray([2204, 2919, 1996])
    sub = np.asarray(lm.model.mlm_logits(h[jnp.asarray(real)], vocab_ids=ids))
    np.testing.assert_allclose(sub, ours[:, np.asarray(ids)], rtol=1e-5, atol=1e-5)


@SCAN
def test_gpt2_logits_match_pytorch(gpt2_dir, scan_layers):
    from transformers import GPT2LMHeadModel

    lm = load_model(gpt2_dir, scan_layers)
    assert lm.fresh == []
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, size=(3, 17))
    mask = np.ones_like(ids)
    mask[1, 12:] = 0  # right padding on one row
    h, _ = lm.model(jnp.asarray(ids), jnp.asarray(mask))
    ours = np.asarray(lm.model.logits(h))
    with torch.no_grad():
        ref = GPT2LMHeadModel.from_pretrained(str(gpt2_dir)).eval()(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    assert np.abs(ours[real] - ref[real]).max() < 1e-4


@pytest.mark.parametrize("dtype", [jnp.bfloat16])
def test_bfloat16_compute_close_to_float32(splade_dir, dtype):
    lm32 = load_model(splade_dir)
    lm16 = load_model(splade_dir, dtype=dtype)
    enc = _encode(lm32.tokenizer(), TEXTS)
    args = (jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]))
    h32 = lm32.model(*args)
    h16 = lm16.model(*args)
    assert h16.dtype == dtype
    assert lm16.model.embeddings.word.embedding[...].dtype == jnp.float32  # master weights stay float32
    rel = float(jnp.linalg.norm(h16.astype(jnp.float32) - h32) / jnp.linalg.norm(h32))
    assert rel < 0.05


def test_output_positions_equal_gathered_full_output(splade_dir):
    """Computing only some positions in the last layer gives exactly those rows of the full output."""
    lm = load_model(splade_dir)
    enc = _encode(lm.tokenizer(), TEXTS)
    ids, mask = jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"])
    full = np.asarray(lm.model(ids, mask))
    pos = np.array([[0, 3, 5], [1, 2, 2], [7, 0, 11]])
    part = np.asarray(lm.model(ids, mask, output_positions_BxP=jnp.asarray(pos)))
    np.testing.assert_allclose(part, np.take_along_axis(full, pos[..., None], axis=1), atol=2e-5)
