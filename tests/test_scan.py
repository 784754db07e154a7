"""Scanned layers (``model.scan_layers``) and a train step compiled once for a grid.

Claims: a model whose layer stack is one scanned layer over stacked parameters computes what the
unrolled model computes (logits, dropout, KV-cache generation, five training steps with LoRA,
AdaLoRA and full fine-tuning); it exports the same Hugging Face tensors and PEFT files; and one
compiled train step serves every learning rate, step count and seed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from autogpt_jax.config import MeshConfig, OptimConfig, PeftConfig
from autogpt_jax.models import generate, hf, peft, peft_export, scan
from autogpt_jax.training import objectives
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.steps import Trainer


@pytest.fixture(scope="module")
def mesh1():
    return shd.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])


def _ids(vocab: int, shape=(3, 11), seed=0):
    ids = np.random.default_rng(seed).integers(5, min(vocab, 900), shape).astype(np.int32)
    mask = np.ones(shape, np.int32)
    mask[0, :3] = 0  # a left-padded row
    return jnp.asarray(ids), jnp.asarray(mask)


def _both(path):
    unrolled = hf.load_model(path).model
    stacked = nnx.clone(unrolled)
    scan.stack_layers(stacked)
    assert scan.is_stacked(stacked) and not scan.is_stacked(unrolled)
    return unrolled, stacked


def _hidden(model, ids, mask, **kw):
    out = model(ids, mask, **kw)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_scanned_layers_give_the_unrolled_numbers(arch, tiny_bert_dir, gpt2_dir, tiny_llama_dir):
    path = {"bert": tiny_bert_dir, "gpt2": gpt2_dir, "llama": tiny_llama_dir}[arch]
    unrolled, stacked = _both(path)
    n = len(unrolled.layers)
    # Every variable of the stack has the leading layers axis, named for the rules table.
    for _, var in nnx.to_flat_state(nnx.state(stacked.layers, nnx.Param)):
        assert var.get_value().shape[0] == n and var.get_metadata()["out_sharding"][0] == scan.LAYERS_AXIS
    ids, mask = _ids(unrolled.config.vocab_size)
    np.testing.assert_allclose(_hidden(stacked, ids, mask), _hidden(unrolled, ids, mask), atol=1e-5, rtol=1e-5)
    # Training mode: the same dropout masks layer by layer (Llama checkpoints have no dropout; the
    # training test below runs LoRA dropout through the scan).
    a = _hidden(unrolled, ids, mask, rngs=nnx.Rngs(dropout=3))
    b = _hidden(stacked, ids, mask, rngs=nnx.Rngs(dropout=3))
    assert arch == "llama" or not np.allclose(a, _hidden(unrolled, ids, mask), atol=1e-3)  # dropout is on
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)
    if arch == "bert":  # the last layer computed at the output positions only
        pos = jnp.asarray([[1, 4], [2, 9], [0, 10]])
        np.testing.assert_allclose(stacked(ids, mask, output_positions_BxP=pos),
                                   unrolled(ids, mask, output_positions_BxP=pos), atol=1e-5, rtol=1e-5)
    else:  # the KV cache: one stacked buffer, the same greedy tokens
        assert stacked.init_cache(2, 16).layers.k_BxHxSxK.shape[0] == n
        np.testing.assert_array_equal(generate(stacked, ids, mask, max_new_tokens=6),
                                      generate(unrolled, ids, mask, max_new_tokens=6))
    scan.unstack_layers(stacked)
    np.testing.assert_array_equal(_hidden(stacked, ids, mask), _hidden(unrolled, ids, mask))


def _cloze_batch(vocab, i):
    ids, mask = _ids(vocab, (4, 10), seed=i)
    return {"input_ids": ids, "attention_mask": mask, "mask_pos": jnp.full((4,), 9, jnp.int32),
            "labels": jnp.asarray([0, 1, 1, 0], jnp.int32)}


@pytest.mark.parametrize("method", ["lora", "adalora", "none"])
def test_scanned_and_unrolled_train_the_same_five_steps(method, tiny_llama_dir, mesh1):
    unrolled, stacked = _both(tiny_llama_dir)
    pc = PeftConfig(method=method, targets="query,value,gate", rank=4, init_rank=4, target_rank=2, adalora_t_init=1,
                    adalora_t_final=1, adalora_delta_t=1, dropout=0.1)
    loss = objectives.make_cloze_loss(np.asarray([[11], [23]]), np.ones((2, 1), np.float32))
    kw = {}
    if method != "none":
        kw = {"trainable": peft.trainable_filter(pc)}
    if method == "adalora":
        loss = peft.with_orthogonality(loss, 0.1)
        kw["hook"] = peft.adalora_update(pc, 5)
    losses, models = {}, {}
    for name, model in (("unrolled", unrolled), ("scanned", stacked)):
        peft.apply(model, pc, seed=1)
        assert scan.is_stacked(model) == (name == "scanned")
        trainer, state = Trainer.create(model, loss, OptimConfig(learning_rate=3e-3, warmup_steps=1), 5, mesh1, **kw)
        losses[name] = []
        for i in range(5):
            state, m = trainer.train_step(state, shd.put_batch(_cloze_batch(model.config.vocab_size, i), mesh1),
                                          jax.random.key(7))
            losses[name].append(float(m["loss"]))
        models[name] = trainer.model(state)
    assert len(set(np.round(losses["unrolled"], 4))) > 1  # the loss moves
    np.testing.assert_allclose(losses["scanned"], losses["unrolled"], rtol=1e-5, atol=1e-6)
    if method == "adalora":  # the same triplets switched off in both layouts
        assert peft.total_rank(models["scanned"]) == peft.total_rank(models["unrolled"]) < 4 * 3 * 2
    ids, mask = _ids(unrolled.config.vocab_size)
    np.testing.assert_allclose(_hidden(models["scanned"], ids, mask), _hidden(models["unrolled"], ids, mask),
                               atol=1e-5, rtol=1e-4)


def test_scanned_model_exports_what_the_unrolled_one_does(tiny_llama_dir, tiny_bert_dir, tmp_path):
    unrolled, stacked = _both(tiny_llama_dir)
    spec = hf.ARCHS["llama"]
    arch = hf.default_architecture(unrolled)
    want, got = hf.to_hf_state(unrolled, spec, arch), hf.to_hf_state(stacked, spec, arch)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # LoRA: merged into stacked kernels, and the unmerged adapter with per-layer names.
    pc = PeftConfig(method="lora", targets="query,value", rank=4)
    for m in (unrolled, stacked):
        peft.apply(m, pc, seed=2)
        for _, d in peft.target_denses(m, pc.target_list):  # a non-zero update to merge
            d.lora_b[...] = jnp.full(d.lora_b.shape, 0.01)
    a = peft_export.save_lora_adapter(unrolled, tmp_path / "u", pc, "base")
    b = peft_export.save_lora_adapter(stacked, tmp_path / "s", pc, "base")
    from safetensors.numpy import load_file

    ua, sa = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert set(ua) == set(sa) and any(".layers.1." in k for k in sa)
    for k in ua:
        np.testing.assert_array_equal(sa[k], ua[k])
    assert peft.merge(unrolled) == 2 * len(unrolled.layers) and peft.merge(stacked) == 2
    ids, mask = _ids(unrolled.config.vocab_size)
    np.testing.assert_allclose(_hidden(stacked, ids, mask), _hidden(unrolled, ids, mask), atol=1e-5, rtol=1e-5)
    # Adapters (not mergeable): the side file written from the stack loads into a stack.
    enc, enc2 = _both(tiny_bert_dir)[1], _both(tiny_bert_dir)[1]
    pa = PeftConfig(method="adapter", adapter_size=4)
    peft.apply(enc, pa, seed=3)
    for _, var in nnx.to_flat_state(nnx.state(enc, peft.PeftParam)):
        var.set_value(var.get_value() + 0.01)
    peft_export.save_params(enc, tmp_path / "p.safetensors")
    peft.apply(enc2, pa, seed=4)
    peft_export.load_params(enc2, tmp_path / "p.safetensors")
    assert scan.is_stacked(enc2)
    ids, mask = _ids(enc.config.vocab_size)
    np.testing.assert_array_equal(enc2(ids, mask), enc(ids, mask))


def test_one_compiled_step_serves_the_learning_rate_grid(tiny_llama_dir, mesh1):
    """Two learning rates and two step counts, each fine-tuning run building its own loss and
    LoRA copy as the stage does: one executable, and each run still follows its own schedule."""
    base = hf.load_model(tiny_llama_dir).model
    scan.stack_layers(base)
    pc = PeftConfig(method="lora", targets="query,value", rank=4)
    runs = []
    for lr, total in ((1e-3, 6), (3e-3, 9)):
        model = nnx.clone(base)
        peft.apply(model, pc, seed=0)
        loss = objectives.make_cloze_loss(np.asarray([[11], [23]]), np.ones((2, 1), np.float32))
        cfg = OptimConfig(learning_rate=lr, warmup_steps=2)
        trainer, state = Trainer.create(model, loss, cfg, total, mesh1, trainable=peft.trainable_filter(pc))
        lrs = []
        for i in range(3):
            state, m = trainer.train_step(state, shd.put_batch(_cloze_batch(base.config.vocab_size, i), mesh1),
                                          jax.random.key(int(lr == 1e-3)))
            lrs.append(float(m["lr"]))
        runs.append((trainer, lrs))
    (t1, lr1), (t2, lr2) = runs
    assert t1._train is t2._train and t1._train._cache_size() == 1
    np.testing.assert_allclose(lr1, [0.0, 5e-4, 1e-3], rtol=1e-6)
    np.testing.assert_allclose(lr2, [0.0, 1.5e-3, 3e-3], rtol=1e-6)
    # A different loss (other label words) is a different program.
    other = objectives.make_cloze_loss(np.asarray([[12], [23]]), np.ones((2, 1), np.float32))
    t3, _ = Trainer.create(nnx.clone(t1.model(state)), other, OptimConfig(), 4, mesh1,
                           trainable=peft.trainable_filter(pc))
    assert t3.compile()._train is not t1._train
