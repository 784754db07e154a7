"""Shared fixtures: real packaged checkpoints, and small random ones written by PyTorch transformers."""

import os
import tempfile

# Tests run on the CPU; set before jax is imported anywhere. One device by default: the tests
# marked `multidevice` need 8 simulated devices and run in a process of their own
# (`make test` runs both: XLA_FLAGS=--xla_force_host_platform_device_count=8 pytest -m multidevice).
# Tiny models on 8 simulated devices sharing 2 cores run ~1.2-1.7x slower than on one (23% for
# test_engine + test_optim, measured 2026-12-01).
MULTIDEVICE = 8
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
# Most of the suite's time is XLA compiling small programs (eager ops, tiny models' steps). The
# suite (and every process it starts, see xla_env) compiles them the cheap way: without LLVM's
# optimisations, with the classic elemental emitters, and in one codegen thread (the default splits
# codegen over threads that the other pytest-xdist worker needs). Measured 2026-12-01 on this
# 2-core CPU: a tiny BERT train step compiles in 1.3 s instead of 3.6 s; test_engine + test_optim
# take 56 s of CPU instead of 97 s with the LLVM flags alone. AUTOGPT_JAX_TEST_XLA_OPT=1 keeps
# XLA's defaults, to run the suite exactly as users' runs compile.
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1")
if os.environ.get("AUTOGPT_JAX_TEST_XLA_OPT") != "1" and "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " " + FAST_COMPILE
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent compilation cache for the whole session and every process it starts (training
# runs, predict, the demo apps): the same step compiled by a new Trainer, a resumed run or a second
# app is read back instead of compiled again. A fresh directory per session, so nothing stale is
# reused; JAX_COMPILATION_CACHE_DIR set by the caller wins.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _JIT_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="autogpt_jax_test_jit_")
else:
    _JIT_CACHE = None
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import re  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402


def xla_env(devices: int) -> dict:
    """The environment for a process the tests start: this session's, with `devices` CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+",
                              f"--xla_force_host_platform_device_count={devices}", env["XLA_FLAGS"])
    return env


# Fixtures that train whole pipelines: the tests that use them are `slow` and share one
# pytest-xdist worker, so each run is trained once per session.
SHARED_RUNS = ("sentiment_run", "support_run")
MAX_WORKERS = 4  # pytest-xdist workers for `-n auto` (pyproject's addopts): one per core, at most 4


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook
def pytest_xdist_auto_num_workers(config):
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    import jax

    for item in items:
        if any(f in item.fixturenames for f in SHARED_RUNS):
            item.add_marker(pytest.mark.xdist_group("shared_runs"))
            item.add_marker(pytest.mark.slow)
    # Longest first: the slow tests are handed out before the quick ones, so the workers finish
    # together instead of one of them running a long test at the end (a stable sort: the order
    # within each kind is the collection order).
    items.sort(key=lambda item: "slow" not in item.keywords)
    if jax.device_count() >= MULTIDEVICE:
        return
    skip = pytest.mark.skip(reason=f"needs {MULTIDEVICE} devices, this process has {jax.device_count()}: run "
                                   f"XLA_FLAGS=--xla_force_host_platform_device_count={MULTIDEVICE} pytest -m multidevice "
                                   "(make test does)")
    for item in items:
        if "multidevice" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    if _JIT_CACHE:
        shutil.rmtree(_JIT_CACHE, ignore_errors=True)


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


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, tiny_bert_dir):
    """The tiny random BERT saved as a bare BertModel: a sentence encoder without an MLM head,
    shaped like MiniLM's checkpoint (the loader initialises the head fresh)."""
    from transformers import BertModel

    out = tmp_path_factory.mktemp("encoder_random")
    BertModel.from_pretrained(str(tiny_bert_dir)).save_pretrained(out)
    for f in tiny_bert_dir.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, out)
    return out


FEWSHOT_CFG = "tests/configs/tiny_fewshot.yaml"
SUPPORT_CFG = "tests/configs/tiny_support.yaml"


@pytest.fixture(scope="session")
def sentiment_run(tmp_path_factory, tiny_bert_dir):
    """One sentiment run shared by the distillation tests and the demo: splade-tiny with a fixed
    prompt, fine-tuned, evaluated, distilled into the tiny random BERT, exported."""
    from autogpt_jax.config import load_config
    from autogpt_jax.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("sentiment") / "run"
    cfg = load_config(["--config_path", FEWSHOT_CFG, "--output_dir", str(out),
                       "--stages", "prompt,finetune,evaluate,distill,export",
                       "--prompt.template", "{text} It was {mask}.", "--prompt.label_words", "negative=terrible|positive=great",
                       "--distill.student", str(tiny_bert_dir), "--distill.steps", "6", "--distill.batch_size", "8",
                       "--distill.max_unlabeled", "64", "--distill.eval_every", "3", "--distill.max_length", "32"])
    return out, run_pipeline(cfg, return_run=True)


@pytest.fixture(scope="session")
def support_run(tmp_path_factory, splade_dir):
    """configs/support_qa.yaml's stages on splade-tiny, the packaged pretrained bert-tiny (intent +
    hand-over + retriever), shared by the customer-service tests, the demo and the LangChain graph.
    Pretrained, it gets about half the Bitext test questions right after its 4 steps and hands
    most out-of-scope queries over, so the graph test has real answers and real hand-overs."""
    from autogpt_jax.config import load_config
    from autogpt_jax.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("support")
    cfg = load_config(["--config_path", SUPPORT_CFG, "--model.name_or_path", str(splade_dir),
                       "--output_dir", str(out)])
    return out, run_pipeline(cfg)
