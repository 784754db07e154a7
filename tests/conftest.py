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


@pytest.fixture(scope="session")
def smollm2_path():
    from autogpt_jax.models import resolve

    return resolve("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    from autogpt_jax.models import hf

    return hf.load_tokenizer(smollm2_path)


def _tiny_llama(out, tokenizer, *, model_type="llama", tie=False):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    extra = {"attention_bias": False} if model_type == "llama" else {}
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5,
                               tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=2, **extra)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # random norms and biases, so their loading is tested too
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_tokenizer):
    """A random 2-layer Llama (grouped-query attention, untied head) with SmolLM2's tokenizer."""
    return _tiny_llama(tmp_path_factory.mktemp("llama_random"), smollm2_tokenizer)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, smollm2_tokenizer):
    """A random 2-layer Qwen2 (q/k/v biases, tied head)."""
    return _tiny_llama(tmp_path_factory.mktemp("qwen2_random"), smollm2_tokenizer, model_type="qwen2", tie=True)
