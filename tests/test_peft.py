"""Parameter-efficient fine-tuning: trainable counts, frozen weights, merging, PEFT-library export,
AdaLoRA's budget, sharding, checkpoints, bad input, and the pipeline with each method."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from autogpt_jax.config import CheckpointConfig, ConfigError, MeshConfig, OptimConfig, PeftConfig, load_config
from autogpt_jax.models import hf, peft, peft_export
from autogpt_jax.models.bert import Bert, BertConfig
from autogpt_jax.models.gpt2 import GPT2, GPT2Config
from autogpt_jax.training import objectives
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.steps import Trainer

METHODS = ("lora", "adalora", "adapter", "prefix", "prompt", "bitfit")
BERT = BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                  max_position_embeddings=64, num_labels=2, hidden_dropout=0.0, attention_dropout=0.0)


def _cfg(method, **kw):
    base = dict(method=method, rank=4, init_rank=6, target_rank=2, num_virtual_tokens=4, adapter_size=8,
                adalora_t_init=2, adalora_t_final=2, adalora_delta_t=1)
    base.update(kw)
    return PeftConfig(**base)


def _batch(seed=0, B=8, L=12):
    ids = jnp.asarray(np.random.default_rng(seed).integers(5, 100, (B, L)), jnp.int32)
    return {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "labels": jnp.arange(B, dtype=jnp.int32) % 2}


def _loss(m, b, r):
    return objectives.classification_loss(m, b, r, pooling="mean")


def _trainer(model, pc, mesh, steps=10):
    loss = peft.with_orthogonality(_loss, pc.orth_reg) if pc.method == "adalora" else _loss
    hook = peft.adalora_update(pc, steps) if pc.method == "adalora" else None
    return Trainer.create(model, loss, OptimConfig(learning_rate=1e-2), steps, mesh,
                          trainable=peft.trainable_filter(pc, head_paths=("classifier",)), hook=hook)


# Where each method's parameters live on the 2 (data) x 2 (fsdp) x 2 (tensor) mesh: the logical
# axes of the projection they attach to (embed -> fsdp, heads/mlp -> tensor), by name.
PEFT_SPECS = {
    "lora": {"lora_a": ("fsdp", None), "lora_b": (None, "tensor")},
    "adalora": {"lora_a": ("fsdp", None), "lora_b": (None, "tensor"), "lora_e": (None,)},
    "adapter": {"down": ("fsdp", None), "up": (None, "fsdp"), "down_bias": (None,), "up_bias": ("fsdp",)},
    "prefix": {"prefix_k": (None, "tensor"), "prefix_v": (None, "tensor")},
    "prompt": {"soft_prompt": (None, "fsdp")},
}


def _assert_peft_shardings(method, params):
    seen = 0
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        name = keys[-2] if keys[-1] == "value" else keys[-1]
        spec = tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
        if method == "bitfit" and name == "bias" and "query" in keys:
            assert spec == ("tensor",) and x.addressable_shards[0].data.shape == (BERT.hidden_size // 2,)
            seen += 1
        elif name in PEFT_SPECS.get(method, {}):
            assert spec == PEFT_SPECS[method][name], (keys, spec)
            seen += 1
    assert seen, f"no {method} parameters found"


@pytest.mark.multidevice
@pytest.mark.parametrize("method", METHODS)
def test_method_trains_only_its_parameters_and_shards(method):
    mesh1 = shd.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    mesh8 = shd.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    pc = _cfg(method)
    losses = {}
    for name, mesh in (("1", mesh1), ("8", mesh8)):
        model = Bert(BERT, rngs=nnx.Rngs(0))
        before = model(_batch()["input_ids"])
        base = {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
        peft.apply(model, pc)
        if method not in ("prefix", "prompt"):  # the others start as the unchanged model
            np.testing.assert_array_equal(np.asarray(model(_batch()["input_ids"])), np.asarray(before))
        trainer, state = _trainer(model, pc, mesh)
        if name == "8":
            _assert_peft_shardings(method, state.params)
        head = BERT.hidden_size * 2 + 2
        n_train = sum(x.size for x in jax.tree.leaves(state.params))
        assert n_train == peft.count_formula(model, pc) + head
        # No Adam moments for frozen weights: the optimiser state is 2 × the trainable count (+ counters).
        n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
        assert n_opt == 2 * n_train
        losses[name] = []
        for i in range(4):
            state, m = trainer.train_step(state, shd.put_batch(_batch(i), mesh), jax.random.key(0))
            losses[name].append(float(m["loss"]))
        trained = trainer.model(state)
        after = {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(trained, nnx.Param))}
        changed = [k for k in base if not np.array_equal(base[k], after[k])]
        trains = [k for k in after if k not in base or k[0] == "classifier" or (method == "bitfit" and k[-1] == "bias")]
        assert set(changed) <= set(trains)  # frozen weights are bit-identical
        assert changed or method not in ("bitfit",)
        peft_changed = [k for k in after if k not in base and not np.allclose(after[k], 0)]
        assert method == "bitfit" or peft_changed
    np.testing.assert_allclose(losses["8"], losses["1"], rtol=1e-4)


def test_training_a_peft_copy_leaves_the_base_model_usable():
    """The step donates its state; the frozen arrays a PEFT copy shares with its base must survive."""
    base = Bert(BERT, rngs=nnx.Rngs(0))
    ids = _batch()["input_ids"]
    before = np.asarray(base(ids))
    for method in ("lora", "adapter"):
        model = nnx.clone(base)
        pc = _cfg(method)
        peft.apply(model, pc)
        trainer, state = _trainer(model, pc, shd.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1]))
        trainer.train_step(state, _batch(), jax.random.key(0))
        np.testing.assert_array_equal(np.asarray(base(ids)), before)


def test_lora_merge_matches_unmerged():
    model = Bert(BERT, rngs=nnx.Rngs(0))
    pc = _cfg("lora", targets="query,value,intermediate")
    peft.apply(model, pc)
    trainer, state = _trainer(model, pc, shd.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1]))
    for i in range(3):
        state, _ = trainer.train_step(state, _batch(i), jax.random.key(0))
    model = trainer.model(state)
    ids = _batch(9)["input_ids"]
    unmerged = np.asarray(model.classify(model(ids), jnp.ones_like(ids), pooling="mean"))
    assert peft.merge(model) == 2 * 3 and not peft.has_peft(model)
    merged = np.asarray(model.classify(model(ids), jnp.ones_like(ids), pooling="mean"))
    np.testing.assert_allclose(merged, unmerged, atol=1e-5)


def test_lora_export_loads_in_pytorch_peft(tiny_bert_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForMaskedLM

    lm = hf.load_model(tiny_bert_dir)
    model = lm.model
    pc = PeftConfig(method="lora", rank=4, alpha=8, targets="query,value,output")
    peft.apply(model, pc)
    for _, d in peft.target_denses(model, pc.target_list):  # a trained-looking B (it starts at zero)
        d.lora_b[...] = 0.05 * jax.random.normal(jax.random.key(1), d.lora_b.shape)
    out = peft_export.save_lora_adapter(model, tmp_path / "adapter", pc, str(tiny_bert_dir))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4
    ids = np.random.default_rng(0).integers(5, 1000, (2, 10))
    h = model(jnp.asarray(ids))
    ours = np.asarray(model.mlm_logits(h.reshape(-1, h.shape[-1]))).reshape(2, 10, -1)
    ref = PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(str(tiny_bert_dir)), str(out)).eval()
    n_lora = sum(1 for n, _ in ref.named_modules() if n.endswith("lora_A"))
    assert n_lora == 2 * 3  # query, value, output.dense (not attention.output.dense) in 2 layers
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours, want, atol=1e-4)
    merged = ref.merge_and_unload()
    with torch.no_grad():
        np.testing.assert_allclose(merged(input_ids=torch.tensor(ids)).logits.numpy(), ours, atol=1e-4)


def test_adalora_total_rank_follows_budget():
    pc = _cfg("adalora", init_rank=6, target_rank=2, adalora_t_init=3, adalora_t_final=4, adalora_delta_t=1)
    model = Bert(BERT, rngs=nnx.Rngs(0))
    peft.apply(model, pc)
    steps = 16
    trainer, state = _trainer(model, pc, shd.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1]), steps)
    n = len(peft.adalora_denses(model))
    assert n == 4
    ranks = []
    for i in range(steps):
        state, m = trainer.train_step(state, _batch(i), jax.random.key(0))
        assert float(m["orth_reg"]) >= 0
        ranks.append(peft.total_rank(trainer.model(state)))
    # Written out from the schedule (Zhang et al. 2023): 6 x 4 = 24 until t_init (3), then
    # round(8 + 16 (1 - (t - 3)/9)^3) down to the target 2 x 4 = 8 at 16 - t_final = 12.
    assert ranks == [24, 24, 24, 24, 19, 16, 13, 11, 9, 9, 8, 8, 8, 8, 8, 8]
    assert ranks == [int(peft.budget(jnp.asarray(i), pc, steps, n)) for i in range(steps)]
    assert ranks[0] == 24 and ranks[-1] == 8 and ranks == sorted(ranks, reverse=True)


@pytest.mark.parametrize("method", METHODS)
def test_peft_state_survives_checkpoint_resume(tmp_path, method):
    from autogpt_jax.training.checkpoint import StageCheckpointer

    mesh = shd.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    pc = _cfg(method)

    def fresh():
        model = Bert(BERT, rngs=nnx.Rngs(0))
        peft.apply(model, pc)
        return _trainer(model, pc, mesh)

    trainer, state = fresh()
    for i in range(6):
        state, _ = trainer.train_step(state, _batch(i), jax.random.key(0))
        if i == 2:
            ck = StageCheckpointer(tmp_path / "ck", CheckpointConfig(async_save=False))
            ck.save(3, state, {"data": {}}, metrics={})
            ck.close()
    trainer2, state2 = fresh()
    state2, _, start = StageCheckpointer(tmp_path / "ck", CheckpointConfig()).restore_latest(state2)
    assert start == 3
    for i in range(3, 6):
        state2, _ = trainer2.train_step(state2, _batch(i), jax.random.key(0))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(state2.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    for a, b in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(state2.frozen)):  # AdaLoRA masks too
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_bad_peft_input_is_refused_before_training():
    model = Bert(BERT, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="valid names: query, key, value, out, intermediate, output"):
        peft.apply(model, PeftConfig(method="lora", targets="query,q_proj"))
    with pytest.raises(ConfigError, match="larger than layers.0.attention.query allows"):
        peft.apply(model, PeftConfig(method="lora", rank=64))
    gpt = GPT2(GPT2Config(vocab_size=64, n_positions=16, hidden_size=8, num_layers=1, num_heads=2,
                          intermediate_size=16), rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="prefix is built for BERT-family encoders"):
        peft.apply(gpt, PeftConfig(method="prefix"))
    assert not peft.has_peft(model) and not peft.has_peft(gpt)
    with pytest.raises(ConfigError, match="peft.method must be one of"):
        load_config(["--peft.method", "ia3"])
    with pytest.raises(ConfigError, match="fgm_epsilon"):
        load_config(["--peft.method", "lora", "--finetune.fgm_epsilon", "1.0"])


@pytest.mark.parametrize("method", ["lora", "adalora", "adapter", "prefix", "prompt",
                                    pytest.param("lora", marks=pytest.mark.multidevice, id="lora-8-devices")])
@pytest.mark.slow  # a whole pipeline run
def test_pipeline_with_peft_exports_what_it_predicts(tmp_path, method):
    """LoRA and AdaLoRA are merged into a plain Hugging Face model at export (LoRA also written
    unmerged for the PEFT library); adapters, prefixes and soft prompts go to peft.safetensors and
    predict re-attaches them. Either way predict gives what the run predicted."""
    from transformers import AutoModelForMaskedLM

    from autogpt_jax.pipeline import run_pipeline
    from autogpt_jax.export_format import load_classifier
    from autogpt_jax.inference import predict_records

    out = tmp_path / method
    run = run_pipeline(load_config(["--config_path", "tests/configs/tiny_fewshot.yaml", "--output_dir", str(out),
                                    "--stages", "adapt,finetune,evaluate,export", "--peft.method", method,
                                    "--peft.rank", "4", "--peft.adapter_size", "8", "--peft.init_rank", "6",
                                    "--peft.target_rank", "2", "--peft.num_virtual_tokens", "4",
                                    "--peft.adalora_t_init", "1", "--peft.adalora_t_final", "2"]), return_run=True)
    seed = run.report["seeds"][0]
    ft = seed["finetune"]["chosen"]
    assert ft["trainable_parameters"] < run.report["parameters"] / 5
    meta = json.loads((out / "export" / "autogpt_jax.json").read_text())
    merged = method in ("lora", "adalora")
    assert meta["peft"]["method"] == method and meta["peft"]["merged"] == merged
    assert (out / "export" / "peft_adapter" / "adapter_config.json").exists() == (method == "lora")
    assert (out / "export" / "peft.safetensors").exists() == (not merged)
    texts = ["a moving, beautifully acted film", "dull and lifeless", "ok"]
    clf = load_classifier(out / "export")
    loaded = predict_records(clf, texts)
    np.testing.assert_allclose([[r["probabilities"][l] for l in meta["labels"]] for r in loaded],
                               run.classifier.probabilities(texts), atol=1e-5)
    assert peft.has_peft(clf.model) == (not merged)  # re-attached from peft.safetensors, or merged away
    if merged:  # the merged export is an ordinary BertForMaskedLM: PyTorch gives our MLM logits
        import torch

        ids = np.asarray([[101, 1037, 2307, 2143, 103, 102]])
        h = clf.model(jnp.asarray(ids))
        ours = np.asarray(clf.model.mlm_logits(h.reshape(-1, h.shape[-1]))).reshape(1, 6, -1)
        with torch.no_grad():
            ref = AutoModelForMaskedLM.from_pretrained(str(out / "export")).eval()(input_ids=torch.tensor(ids)).logits
        np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4)


def test_frozen_weights_in_bfloat16():
    """peft.frozen_dtype bfloat16: the frozen parameters are stored in bf16 (half the bytes), the
    trained ones stay float32, and the loss stays close to the float32 run."""
    mesh = shd.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    pc = _cfg("lora")
    losses = {}
    for dt in (None, jnp.bfloat16):
        model = Bert(BERT, rngs=nnx.Rngs(0))
        peft.apply(model, pc)
        trainer, state = Trainer.create(model, _loss, OptimConfig(learning_rate=1e-2), 10, mesh,
                                        trainable=peft.trainable_filter(pc, head_paths=("classifier",)), frozen_dtype=dt)
        kinds = {x.dtype for x in jax.tree.leaves(state.frozen)}
        assert kinds == ({jnp.dtype(jnp.bfloat16)} if dt else {jnp.dtype(jnp.float32)})
        assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
        losses[dt] = []
        for i in range(3):
            state, m = trainer.train_step(state, _batch(i), jax.random.key(0))
            losses[dt].append(float(m["loss"]))
    np.testing.assert_allclose(losses[jnp.bfloat16], losses[None], rtol=2e-2)
