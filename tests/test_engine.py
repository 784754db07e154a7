"""The training engine: sharding invariance, checkpoints, NaN handling, losses."""

import collections
import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from autogpt_jax.config import CheckpointConfig, MeshConfig, OptimConfig
from autogpt_jax.data import batching
from autogpt_jax.data.sources import load_unlabeled
from autogpt_jax.models import hf
from autogpt_jax.models.bert import Bert, BertConfig
from autogpt_jax.training import objectives, steps
from autogpt_jax.training import sharding as shd
from autogpt_jax.training.checkpoint import StageCheckpointer
from autogpt_jax.training.steps import Trainer


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree)))


@pytest.fixture(scope="module")
def tok(splade_dir):
    return hf.load_tokenizer(splade_dir)


@pytest.fixture(scope="module")
def packed(tok):
    texts = load_unlabeled("wiki_summaries", limit=200)
    return batching.pack(batching.tokenize(tok, texts), 32, style="bert", bos_id=tok.cls_token_id,
                         eos_id=tok.sep_token_id)


def _tiny_bert(vocab):
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                     max_position_embeddings=64)
    return Bert(cfg, rngs=nnx.Rngs(0))


def _run(mesh, packed, tok, steps=5, loss=objectives.mlm_loss, grad_accum=1):
    trainer, state = Trainer.create(_tiny_bert(len(tok)), loss, OptimConfig(learning_rate=3e-3, grad_accum=grad_accum),
                                    100, mesh)
    batches = batching.PretrainBatches(packed, 16, 0, objective="mlm", tokenizer=tok)
    losses = []
    for _ in range(steps):
        state, m = trainer.train_step(state, shd.put_batch(next(batches), mesh), jax.random.key(0))
        losses.append(float(m["loss"]))
    return losses, state


@pytest.mark.multidevice
def test_same_losses_on_1_and_8_devices(packed, tok):
    mesh1 = shd.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    mesh8 = shd.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert dict(mesh8.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    l1, _ = _run(mesh1, packed, tok)
    l8, state8 = _run(mesh8, packed, tok)
    np.testing.assert_allclose(l8, l1, rtol=1e-4)
    assert l1[-1] < l1[0]
    # Parameters really are sharded by the logical rules.
    params = state8.params
    assert params["embeddings"]["word"]["embedding"][...].sharding.spec == P("tensor", "fsdp")
    assert params["layers"][0]["intermediate"]["kernel"][...].sharding.spec == P("fsdp", "tensor")
    assert params["layers"][0]["attention"]["out"]["kernel"][...].sharding.spec == P("tensor", "fsdp")
    q = params["layers"][0]["attention"]["query"]["kernel"][...]
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (16, 16)
    assert params["embeddings"]["norm"]["scale"][...].sharding.spec == P(None)  # norms replicated
    # Adam moments follow their parameters' shardings.
    mu = jax.tree.leaves(state8.opt_state)
    assert any(getattr(x, "sharding", None) is not None and x.sharding.spec == P("tensor", "fsdp") for x in mu)


def test_grad_accumulation_matches_full_batch(packed, tok):
    """grad_accum k splits the batch into k micro-batches and averages their gradients: with a loss
    that is a mean over equally weighted examples that is exactly the full batch's step."""
    mesh = shd.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                     max_position_embeddings=64, num_labels=2, hidden_dropout=0.0, attention_dropout=0.0)
    rng = np.random.default_rng(0)
    batches = [{"input_ids": rng.integers(1000, 2000, (8, 16)).astype(np.int32),
                "attention_mask": np.ones((8, 16), np.int32), "labels": rng.integers(0, 2, 8).astype(np.int32)}
               for _ in range(3)]
    loss = lambda m, b, r: objectives.classification_loss(m, b, None, pooling="mean")  # noqa: E731
    runs = {}
    for k in (1, 2, 4):
        trainer, state = Trainer.create(Bert(cfg, rngs=nnx.Rngs(0)), loss,
                                        OptimConfig(learning_rate=1e-2, grad_accum=k), 10, mesh)
        losses = []
        for b in batches:
            state, m = trainer.train_step(state, shd.put_batch(b, mesh), jax.random.key(0))
            losses.append(float(m["loss"]))
        runs[k] = (losses, jax.tree.map(np.asarray, state.params))
    for k in (2, 4):
        np.testing.assert_allclose(runs[k][0], runs[1][0], rtol=1e-5)
        for a, b in zip(jax.tree.leaves(runs[k][1]), jax.tree.leaves(runs[1][1])):
            np.testing.assert_allclose(a, b, atol=1e-5)
    # The halves differ (by 15x the tolerance), so a dropped micro-batch or a missing division fails.
    m0 = Bert(cfg, rngs=nnx.Rngs(0))
    jloss = nnx.jit(lambda m, b: loss(m, b, None)[0])  # one compile, not one per eager op
    halves = [float(jloss(m0, {k: jnp.asarray(v[i * 4:(i + 1) * 4]) for k, v in batches[0].items()}))
              for i in range(2)]
    assert runs[1][0][0] == pytest.approx(np.mean(halves), rel=1e-5) and abs(halves[0] - halves[1]) > 1e-4
    # With the masked-LM loss (a mean over masked tokens, whose count differs per micro-batch) the
    # accumulated loss is the mean of the micro-batches' own losses.
    mlm = lambda m, b, r: objectives.mlm_loss(m, b, None)  # noqa: E731
    batch = next(batching.PretrainBatches(packed, 16, 0, objective="mlm", tokenizer=tok))
    model = _tiny_bert(len(tok))
    jmlm = nnx.jit(lambda m, b: mlm(m, b, None)[0])
    halves = [float(jmlm(model, {k: jnp.asarray(v[i * 8:(i + 1) * 8]) for k, v in batch.items()})) for i in range(2)]
    trainer, state = Trainer.create(model, mlm, OptimConfig(grad_accum=2), 10, mesh)
    _, m = trainer.train_step(state, shd.put_batch(batch, mesh), jax.random.key(0))
    assert float(m["loss"]) == pytest.approx(np.mean(halves), rel=1e-5) and halves[0] != pytest.approx(halves[1])


def test_fgm_adds_the_gradient_at_perturbed_word_embeddings(packed, tok):
    """FGM's second loss is the loss at embeddings moved by ε·g/‖g‖, and the update uses both gradients."""
    mesh = shd.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    loss = lambda m, b, r: objectives.mlm_loss(m, b, None)  # noqa: E731 - deterministic, to compare exactly
    batch = shd.put_batch(next(batching.PretrainBatches(packed, 8, 0, objective="mlm", tokenizer=tok)), mesh)
    eps = 0.5
    opt = OptimConfig(learning_rate=1e-3, grad_clip=0.0, weight_decay=0.0)
    model = _tiny_bert(len(tok))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    grad = jax.jit(jax.grad(lambda p: loss(nnx.merge(graphdef, p, rest), batch, None)[0]))
    g = grad(params)
    g_word = g["embeddings"]["word"]["embedding"][...]
    adv = jax.tree.map(lambda x: x, params)
    adv["embeddings"]["word"]["embedding"] = nnx.Param(
        params["embeddings"]["word"]["embedding"][...] + eps * g_word / jnp.linalg.norm(g_word))
    want_adv, _ = jax.jit(lambda p: loss(nnx.merge(graphdef, p, rest), batch, None))(adv)
    g_adv = grad(adv)

    trainer, state = Trainer.create(model, loss, opt, 10, mesh, fgm_epsilon=eps)
    new, m = trainer.train_step(state, batch, jax.random.key(0))
    np.testing.assert_allclose(float(m["adv_loss"]), float(want_adv), rtol=1e-5)
    assert float(m["adv_loss"]) > float(m["loss"])  # the perturbation goes uphill
    # The update's first Adam moment is (1 - b1) × the summed gradient.
    want_norm = float(jnp.sqrt(sum(jnp.sum((a + b) ** 2) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_adv)))))
    np.testing.assert_allclose(float(m["grad_norm"]), want_norm, rtol=1e-4)
    plain, state0 = Trainer.create(_tiny_bert(len(tok)), loss, opt, 10, mesh)
    _, m0 = plain.train_step(state0, batch, jax.random.key(0))
    assert "adv_loss" not in m0
    np.testing.assert_allclose(float(m0["grad_norm"]), float(optax_norm(g)), rtol=1e-4)


def test_mlm_loss_only_projects_masked_positions(tok, packed):
    """The loss on gathered positions equals the full-vocabulary loss restricted to masked positions."""
    model = _tiny_bert(len(tok))
    batch = next(batching.PretrainBatches(packed, 4, 0, objective="mlm", tokenizer=tok))
    b = {k: jnp.asarray(v) for k, v in batch.items()}
    ours, aux = objectives.mlm_loss(model, b)
    h = model(b["input_ids"], b["attention_mask"])
    full = model.mlm_logits(h.reshape(-1, h.shape[-1])).reshape(*h.shape[:2], -1)
    logp = jax.nn.log_softmax(full)
    rows = np.repeat(np.arange(4), b["mlm_positions"].shape[1])
    cols = np.asarray(b["mlm_positions"]).reshape(-1)
    w = np.asarray(b["mlm_weights"]).reshape(-1)
    nll = -np.asarray(logp)[rows, cols, np.asarray(b["mlm_labels"]).reshape(-1)]
    np.testing.assert_allclose(float(ours), (nll * w).sum() / w.sum(), rtol=1e-5)
    assert float(aux["mlm_count"]) == w.sum()


def test_corrupted_newest_checkpoint_falls_back(tmp_path, packed, tok, caplog):
    mesh = shd.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    trainer, state = Trainer.create(_tiny_bert(len(tok)), objectives.mlm_loss, OptimConfig(), 100, mesh)
    init_params = jax.tree.map(np.asarray, state.params)
    ck = StageCheckpointer(tmp_path / "ck", CheckpointConfig(keep=3))
    batches = batching.PretrainBatches(packed, 8, 0, objective="mlm", tokenizer=tok)
    saved = {}
    for step in (1, 2):
        state, _ = trainer.train_step(state, shd.put_batch(next(batches), mesh), jax.random.key(0))
        ck.save(step, state, {"data": batches.state()})
        ck.wait()
        saved[step] = jax.tree.map(np.asarray, state.params)
    assert ck.all_steps() == [1, 2]
    # Tear the newest checkpoint: overwrite every array data file with garbage.
    newest = tmp_path / "ck" / "2" / "state"
    files = [p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert files
    for p in files:
        p.write_bytes(b"\x00garbage")
    fresh_trainer, like = Trainer.create(_tiny_bert(len(tok)), objectives.mlm_loss, OptimConfig(), 100, mesh)
    with caplog.at_level(logging.WARNING):
        got = StageCheckpointer(tmp_path / "ck", CheckpointConfig(keep=3)).restore_latest(like)
    assert got is not None
    restored, extra, step = got
    assert step == 1 and "unreadable" in caplog.text and "falling back" in caplog.text
    assert extra["data"] == {"epoch": 0, "index": 8}
    for a, b in zip(jax.tree.leaves(saved[1]), jax.tree.leaves(jax.tree.map(np.asarray, restored.params))):
        np.testing.assert_array_equal(a, b)
    assert int(restored.step) == 1
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(init_params), jax.tree.leaves(saved[1])))


@pytest.mark.slow  # a whole pipeline run
def test_nan_loss_stops_with_clear_error_and_keeps_good_checkpoint(tmp_path, monkeypatch):
    from autogpt_jax.config import load_config
    from autogpt_jax.pipeline import run_pipeline
    from autogpt_jax.errors import TrainingDivergedError

    orig = steps._train_step

    def poisoned(spec, tx, state, batch, rng):  # from step 8 on, the update diverges
        new, m = orig(spec, tx, state, batch, rng)
        bad = state.step >= 7
        m = dict(m, loss=jnp.where(bad, jnp.nan, m["loss"]))
        params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), new.params)
        return new.replace(params=params), m

    monkeypatch.setattr(steps, "_train_step", poisoned)
    monkeypatch.setattr(steps, "_STEPS", collections.OrderedDict())  # not the process's compiled steps
    out = tmp_path / "nan"
    cfg = load_config(["--config_path", "tests/configs/tiny_pretrain.yaml", "--output_dir", str(out)])
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at step 8.*last good checkpoint is step 5"):
        run_pipeline(cfg)
    ck = StageCheckpointer(out / "checkpoints" / "pretrain", CheckpointConfig())
    assert ck.all_steps() == [5]
    monkeypatch.setattr(steps, "_train_step", orig)
    mesh = shd.make_mesh(MeshConfig())
    tok = hf.load_tokenizer(hf.resolve("splade-tiny"))
    _, like = Trainer.create(_tiny_bert(len(tok)), objectives.mlm_loss, OptimConfig(), 20, mesh)
    restored, _, step = ck.restore_latest(like)
    assert step == 5 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))


def test_tiny_pretrain_run_writes_metrics_report_and_tensorboard(tmp_path):
    from autogpt_jax.train import main

    out = tmp_path / "run"
    assert main(["--config_path", "tests/configs/tiny_pretrain.yaml", "--output_dir", str(out),
                 "--stages", "pretrain,export"]) == 0
    report = json.loads((out / "report.json").read_text())
    pre = report["pretrain"]
    assert pre["steps"] == 20 and pre["objective"] == "mlm"
    assert pre["best"]["eval_loss"] < pre["first_eval_loss"] < math.log(len(hf.load_tokenizer(hf.resolve("splade-tiny")))) + 0.5
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if "loss" in r]
    assert steps == list(range(1, 21))
    assert all(r["tokens_per_s"] > 0 for r in recs if "loss" in r)
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "export" / "model.safetensors").exists()
    assert sorted(int(p.name) for p in (out / "checkpoints" / "pretrain").iterdir() if p.name.isdigit()) == [15, 20]
    # Compile seconds apart from the rest, per stage and inside the training summary.
    t = report["timings"]
    assert set(t) == {"build", "pretrain", "export"}
    for stage, e in t.items():
        assert 0 <= e["compile_s"] <= e["wall_s"] and e["run_s"] == pytest.approx(e["wall_s"] - e["compile_s"], abs=0.02)
    assert t["pretrain"]["compile_s"] > 0 and 0 < pre["compile_s"] <= t["pretrain"]["compile_s"] + 0.01
    assert pre["run_s"] > 0
    # A second run into the same directory must not silently clash with (or clobber) those checkpoints.
    from autogpt_jax.config import ConfigError, load_config
    from autogpt_jax.pipeline import run_pipeline

    with pytest.raises(ConfigError, match=r"already holds checkpoints of an earlier run \(pretrain\); pass --checkpoint.resume"):
        run_pipeline(load_config(["--config_path", "tests/configs/tiny_pretrain.yaml", "--output_dir", str(out)]))
    again = run_pipeline(load_config(["--config_path", "tests/configs/tiny_pretrain.yaml", "--output_dir", str(out),
                                      "--checkpoint.resume", "true"]))
    assert again["pretrain"]["resumed_from_step"] == 20 and again["pretrain"]["steps_this_run"] == 0


@pytest.mark.slow  # a whole pipeline run
def test_gpt2_causal_lm_pretraining_from_scratch_exports_for_pytorch(tmp_path):
    """--model.arch gpt2: the pretrain stage trains a causal LM (loss over every next token), the
    eval loss falls, and the export is a GPT2LMHeadModel that PyTorch runs to our logits."""
    import torch
    from transformers import AutoModelForCausalLM

    from autogpt_jax.train import main

    out = tmp_path / "gpt2"
    assert main(["--config_path", "tests/configs/tiny_pretrain.yaml", "--output_dir", str(out), "--model.arch", "gpt2",
                 "--stages", "pretrain,export"]) == 0
    pre = json.loads((out / "report.json").read_text())["pretrain"]
    assert pre["objective"] == "clm" and pre["steps"] == 20
    assert pre["best"]["eval_loss"] < pre["first_eval_loss"]
    lm = hf.load_model(out / "export")
    assert type(lm.model).__name__ == "GPT2"
    ids = np.random.default_rng(0).integers(1000, 2000, (2, 12))
    h, _ = lm.model(jnp.asarray(ids))
    pt = AutoModelForCausalLM.from_pretrained(str(out / "export")).eval()
    assert type(pt).__name__ == "GPT2LMHeadModel"
    with torch.no_grad():
        ref = pt(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(lm.model.logits(h)), ref, atol=1e-4)


def test_keeps_newest_k_plus_best(tmp_path, packed, tok):
    mesh = shd.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    _, state = Trainer.create(_tiny_bert(len(tok)), objectives.mlm_loss, OptimConfig(), 100, mesh)
    ck = StageCheckpointer(tmp_path / "ck", CheckpointConfig(keep=2, best_metric="eval_loss", best_mode="min"))
    for step, metrics in [(1, {"eval_loss": 0.5}), (2, {"eval_loss": 0.9}), (3, None), (4, {"eval_loss": 0.7}),
                          (5, None)]:
        ck.save(step, state, {"data": {"epoch": 0, "index": step}}, metrics)
        ck.wait()
    assert ck.all_steps() == [1, 4, 5]


def test_llama_family_pretrains_from_scratch_and_the_loss_falls(tmp_path):
    """--model.arch llama: a tiny Llama-family decoder (RoPE, RMSNorm, SwiGLU) pretrains with the
    causal-LM objective and its held-out loss falls; it exports as LlamaForCausalLM."""
    from autogpt_jax.train import main

    out = tmp_path / "llama"
    assert main(["--config_path", "tests/configs/tiny_pretrain.yaml", "--output_dir", str(out), "--model.arch", "llama",
                 "--stages", "pretrain,export"]) == 0
    report = json.loads((out / "report.json").read_text())
    pre = report["pretrain"]
    assert report["model"] == "scratch:llama" and pre["objective"] == "clm" and pre["steps"] == 20
    assert pre["best"]["eval_loss"] < pre["first_eval_loss"]
    assert json.loads((out / "export" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert type(hf.load_model(out / "export").model).__name__ == "Llama"


def test_a_stage_whose_config_changed_is_trained_again_on_resume(tmp_path):
    """Each checkpointed stage records its fingerprint (the config keys it reads, its inputs, the
    fingerprints of the stages before it). --checkpoint.resume reuses a stage only under the same
    fingerprint: change an adapt key and adapt trains again while pretraining is resumed; change a
    pretraining key and both train again. (Resuming under the same fingerprint:
    test_tiny_pretrain_run_writes_metrics_report_and_tensorboard.)"""
    from autogpt_jax.config import load_config
    from autogpt_jax.pipeline import run_pipeline

    out = tmp_path / "fp"
    args = ["--config_path", "tests/configs/tiny_pretrain.yaml", "--output_dir", str(out), "--stages", "pretrain,adapt",
            "--data.dataset", "mr", "--data.k_shot", "8", "--data.max_test", "16", "--adapt.steps", "4",
            "--adapt.batch_size", "8", "--adapt.seq_len", "32", "--adapt.max_unlabeled", "32",
            "--prompt.max_length", "32", "--pretrain.steps", "6", "--pretrain.eval_every", "0",
            "--data.max_unlabeled", "60"]

    def run(*extra):
        rep = run_pipeline(load_config([*args, *extra]))
        return rep["pretrain"], rep["seeds"][0]["adapt"]

    pre, ad = run()
    assert pre["steps_this_run"] == 6 and ad["steps_this_run"] == 4 and ad["resumed_from_step"] is None
    # adapt.mask_rate changed: pretraining is reused, adaptation trains again (its old checkpoint set aside).
    pre, ad = run("--checkpoint.resume", "true", "--adapt.mask_rate", "0.3")
    assert pre["resumed_from_step"] == 6 and pre["steps_this_run"] == 0 and pre["stale_checkpoint"] is None
    assert ad["resumed_from_step"] is None and ad["steps_this_run"] == 4
    assert ad["stale_checkpoint"] == ["keys.adapt.mask_rate"]
    assert (out / "checkpoints" / "adapt-seed42.stale").is_dir()
    # The rerun wrote today's fingerprint beside its checkpoints: the next resume under it reuses them.
    fp = json.loads((out / "checkpoints" / "adapt-seed42" / "fingerprint.json").read_text())
    assert fp["keys"]["adapt"]["mask_rate"] == 0.3 and fp["inputs"]["split_seed"] == 42
    assert fp["upstream"]["pretrain"]["keys"]["pretrain"]["steps"] == 6
    # Prompt keys that act only after fine-tuning (calibration, ensemble weighting) leave it current.
    pre, ad = run("--checkpoint.resume", "true", "--adapt.mask_rate", "0.3", "--prompt.calibrate", "pool",
                  "--prompt.ensemble_weighting", "uniform", "--prompt.calibrate_check", "false")
    assert ad["resumed_from_step"] == 4 and ad["steps_this_run"] == 0 and ad["stale_checkpoint"] is None
    # A pretraining key changed: pretraining trains again, and so does the adaptation built on it.
    pre, ad = run("--checkpoint.resume", "true", "--adapt.mask_rate", "0.3", "--pretrain.optim.learning_rate", "0.001")
    assert pre["steps_this_run"] == 6 and pre["stale_checkpoint"] == ["keys.pretrain.optim.learning_rate"]
    assert ad["steps_this_run"] == 4 and ad["stale_checkpoint"] == ["upstream.pretrain.keys.pretrain.optim.learning_rate"]
