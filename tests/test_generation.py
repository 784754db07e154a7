"""KV-cached generation gives exactly what full recomputation gives."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from autogpt_jax.models import generate, load_model


def test_greedy_with_cache_equals_without(gpt2_dir):
    model = load_model(gpt2_dir).model
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 1000, size=(2, 9))
    mask = np.ones_like(ids)
    mask[0, :4] = 0  # left-padded row
    ids[0, :4] = 0
    cached = np.asarray(generate(model, ids, mask, max_new_tokens=12, use_cache=True))
    full = np.asarray(generate(model, ids, mask, max_new_tokens=12, use_cache=False))
    np.testing.assert_array_equal(cached, full)
    # The left-padded row generates what it would alone, unpadded.
    alone = np.asarray(generate(model, ids[:1, 4:], max_new_tokens=12))
    np.testing.assert_array_equal(cached[:1], alone)


def test_greedy_matches_pytorch_generate(gpt2_dir):
    from transformers import GPT2LMHeadModel

    model = load_model(gpt2_dir).model
    ids = np.random.default_rng(2).integers(1, 1000, size=(1, 6))
    ours = np.asarray(generate(model, ids, max_new_tokens=10))
    pt = GPT2LMHeadModel.from_pretrained(str(gpt2_dir)).eval()
    with torch.no_grad():
        ref = pt.generate(torch.tensor(ids), max_new_tokens=10, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[:, 6:].numpy()
    np.testing.assert_array_equal(ours, ref)


def test_sampling_is_seeded_and_top_p_tiny_is_greedy(gpt2_dir):
    model = load_model(gpt2_dir).model
    ids = np.random.default_rng(3).integers(1, 1000, size=(2, 5))
    a = np.asarray(generate(model, ids, max_new_tokens=8, temperature=1.0, seed=7))
    b = np.asarray(generate(model, ids, max_new_tokens=8, temperature=1.0, seed=7))
    c = np.asarray(generate(model, ids, max_new_tokens=8, temperature=1.0, seed=8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    nucleus = np.asarray(generate(model, ids, max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=9))
    np.testing.assert_array_equal(nucleus, np.asarray(generate(model, ids, max_new_tokens=8)))


def test_eos_pads_finished_rows(gpt2_dir):
    model = load_model(gpt2_dir).model
    ids = np.random.default_rng(4).integers(1, 1000, size=(1, 5))
    greedy = np.asarray(generate(model, ids, max_new_tokens=6))
    eos = int(greedy[0, 2])
    out = np.asarray(generate(model, ids, max_new_tokens=6, eos_token_id=eos))
    first = int(np.argmax(out[0] == eos))
    assert (out[0, first:] == eos).all()
    np.testing.assert_array_equal(out[0, :first], greedy[0, :first])


def test_bad_generation_arguments(gpt2_dir):
    model = load_model(gpt2_dir).model
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, jnp.ones((1, 4), jnp.int32), jnp.asarray([[1, 1, 1, 0]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, jnp.ones((1, 4), jnp.int32), max_new_tokens=2, temperature=1.0, top_p=0.0)
