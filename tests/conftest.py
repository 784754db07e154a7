"""Shared fixtures: real packaged checkpoints, and small random ones written by PyTorch transformers."""

import os

# Tests run on the CPU with 8 simulated devices; set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm_dir():
    from autogpt_jax.models import resolve

    return resolve("minilm-l6")


@pytest.fixture(scope="session")
def splade_dir():
    from autogpt_jax.models import resolve

    return resolve("splade-tiny")


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    """A randomly initialised GPT-2 saved by GPT2LMHeadModel.save_pretrained."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=1000, n_positions=64, n_embd=64, n_layer=3, n_head=4, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).eval()
    out = tmp_path_factory.mktemp("gpt2_random")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, splade_dir):
    """A random 2-layer BertForMaskedLM with the splade-tiny tokenizer (fast to load and export)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(splade_dir))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    model = BertForMaskedLM(cfg).eval()
    out = tmp_path_factory.mktemp("bert_random")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
