"""The few-shot pipeline end to end on a tiny real model, plus its bad-input checks."""

import json
import subprocess
import sys

import numpy as np
import pytest

from autogpt_jax.config import ConfigError, load_config
from autogpt_jax.models import hf
from autogpt_jax.prompts.templates import Template, Verbalizer, rule_verbalizer

CFG = "tests/configs/tiny_fewshot.yaml"


@pytest.fixture(scope="module")
def tok(splade_dir):
    return hf.load_tokenizer(splade_dir)


def test_template_language(tok):
    t = Template("{text} All in all, it was {mask}.")
    seqs, mpos = t.encode(tok, ["a gripping film", "word " * 200], 32)
    assert all(len(s) <= 32 for s in seqs)
    for s, m in zip(seqs, mpos):
        assert s[0] == tok.cls_token_id and s[-1] == tok.sep_token_id and s[m] == tok.mask_token_id
        assert tok.decode(s[m + 1:-1]) == "."
    assert t.fill("great acting", "good") == "great acting All in all, it was good."
    for bad, msg in [("{text} It was good.", "exactly one {mask}"), ("It was {mask}.", "{text} exactly once"),
                     ("{text} {mask} {label}", "unknown placeholder")]:
        with pytest.raises(ConfigError, match=msg):
            Template(bad)


def test_verbalizer_multi_token_and_unknown(tok):
    ids, w = Verbalizer((("terrible", "bad"), ("greatness",))).token_table(tok)
    assert ids.shape[0] == 2 and np.allclose(w.sum(1), 1.0)
    assert rule_verbalizer(["negative", "positive"]).words == (("terrible",), ("great",))
    multi = rule_verbalizer(["card_arrival", "exchange_rate"])
    ids, w = multi.token_table(tok)
    assert (w[0] > 0).sum() == 2 and np.allclose(w[0][w[0] > 0], 0.5)  # "card arrival": two pieces, averaged
    with pytest.raises(ConfigError, match="single-token"):
        multi.token_table(tok, single_token=True)
    with pytest.raises(ConfigError, match="not in the tokenizer's vocabulary"):
        Verbalizer((("\u2603\u2603",), ("great",))).token_table(tok)


def test_pipeline_end_to_end_and_predict_matches(tmp_path):
    from autogpt_jax.pipeline import run_pipeline
    from autogpt_jax.predict import load_classifier, predict_records

    out = tmp_path / "run"
    cfg = load_config(["--config_path", CFG, "--output_dir", str(out)])
    run = run_pipeline(cfg, return_run=True)
    report = json.loads((out / "report.json").read_text())
    seed = report["seeds"][0]
    assert seed["sizes"] == {"train": 16, "dev": 16, "test": 2000}
    assert seed["prompt"]["template"] in [c["template"] for c in seed["prompt"]["template_candidates"]]
    assert len(seed["prompt"]["label_words"]) == 2 and seed["prompt"]["label_word_candidates"]
    assert seed["adapt"]["steps"] == 6 and seed["finetune"]["chosen"]["best_dev_accuracy"] >= 0
    t = seed["test"]
    assert 0 <= t["accuracy"] <= 1 and 0 <= t["macro_f1"] <= 1 and np.asarray(t["confusion"]).sum() == 2000
    assert report["summary"]["test_accuracy"]["n"] == 1
    assert (out / "splits" / "seed-13" / "train.jsonl").exists()
    meta = json.loads((out / "export" / "autogpt_jax.json").read_text())
    assert meta["mode"] == "prompt" and meta["labels"] == ["negative", "positive"]
    texts = ["a moving, beautifully acted film", "dull and lifeless", "", "ok"]
    mem = run.classifier.probabilities(texts)
    loaded = predict_records(load_classifier(out / "export"), texts)
    np.testing.assert_allclose([[r["probabilities"][l] for l in meta["labels"]] for r in loaded], mem, atol=1e-5)
    # The CLI, on a file, in input order.
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"text": x}) + "\n" for x in texts))
    proc = subprocess.run([sys.executable, "-m", "autogpt_jax.predict", "--model_dir", str(out / "export"),
                           "--input_file", str(inp)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(l) for l in proc.stdout.splitlines()]
    assert [r["label"] for r in rows] == [r["label"] for r in loaded]


def test_head_mode_and_joint_loss(tmp_path):
    from autogpt_jax.pipeline import run_pipeline

    out = tmp_path / "head"
    report = run_pipeline(load_config(["--config_path", CFG, "--output_dir", str(out), "--stages",
                                       "finetune,evaluate", "--finetune.mode", "head"]))
    assert report["seeds"][0]["finetune"]["mode"] == "head" and "test" in report["seeds"][0]
    out = tmp_path / "joint"
    report = run_pipeline(load_config(["--config_path", CFG, "--output_dir", str(out), "--stages",
                                       "finetune,evaluate", "--finetune.mlm_weight", "0.5"]))
    assert report["seeds"][0]["finetune"]["mlm_weight"] == 0.5
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("mlm_loss" in r and "task_loss" in r for r in recs)


def test_similarity_scoring_matches_pytorch_sentence_embeddings(splade_dir, tok):
    """Similarity scoring = softmax(20 · cos(mean-pooled input, mean of the class's unit-length
    description embeddings)), checked against PyTorch BertModel."""
    import torch
    from transformers import AutoModel

    from autogpt_jax.inference import Classifier

    t = Template("{text} All in all, it was {mask}.")
    assert t.describe("great") == "All in all, it was great."
    assert Template("It was {mask}! {text}").describe("bad") == "It was bad!"
    verb = Verbalizer((("terrible", "bad"), ("great",)))
    ids, mask, w = verb.description_table(tok, t)
    assert ids.shape[0] == 3 and np.allclose(w, [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    lm = hf.load_model(splade_dir)
    clf = Classifier(lm.model, tok, ["neg", "pos"], "similarity", t, descriptions=(ids, mask, w), scale=20.0)
    texts = ["a moving, beautifully acted film", "dull and lifeless, a waste of time", "ok"]
    ours = clf.probabilities(texts)

    ref = AutoModel.from_pretrained(str(splade_dir)).eval()

    def emb(sents):
        e = tok(sents, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = ref(**e).last_hidden_state
        m = e["attention_mask"][..., None].float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    d = emb(["All in all, it was terrible.", "All in all, it was bad.", "All in all, it was great."])
    protos = torch.nn.functional.normalize(torch.stack([(d[0] + d[1]) / 2, d[2]]), dim=-1)
    want = torch.softmax(20 * emb(texts) @ protos.T, -1).numpy()
    np.testing.assert_allclose(ours, want, atol=1e-4)


def test_prompt_scoring_auto_and_similarity_pipeline(tmp_path, minilm_dir):
    """auto picks similarity for a checkpoint without an MLM head; the similarity pipeline (label
    words searched near the rule words, FGM on) runs end to end and its export predicts the same."""
    import types

    from autogpt_jax.models.gpt2 import GPT2, GPT2Config
    from autogpt_jax.pipeline import prompt_mode, run_pipeline
    from autogpt_jax.predict import load_classifier, predict_records

    lm = hf.load_model(minilm_dir)
    cfg = load_config(["--config_path", CFG])
    assert prompt_mode(types.SimpleNamespace(cfg=cfg, model=lm.model, fresh=lm.fresh)) == "similarity"
    assert prompt_mode(types.SimpleNamespace(cfg=cfg, model=lm.model, fresh=[])) == "prompt"
    gpt = GPT2(GPT2Config(vocab_size=64, n_positions=16, hidden_size=8, num_layers=1, num_heads=2,
                          intermediate_size=16), rngs=__import__("flax").nnx.Rngs(0))
    sim = load_config(["--config_path", CFG, "--prompt.scoring", "similarity"])
    with pytest.raises(ConfigError, match="needs a BERT-family sentence encoder"):
        prompt_mode(types.SimpleNamespace(cfg=sim, model=gpt, fresh=[]))
    from autogpt_jax.pipeline import pick_demonstrations
    from autogpt_jax.prompts.templates import Verbalizer

    task = types.SimpleNamespace(train={"text": ["a", "b", "c"], "label": [0, 1, 1]})
    verb = Verbalizer((("bad",), ("good",)))
    with pytest.raises(ConfigError, match="prompt.demonstrations needs a decoder"):
        pick_demonstrations(task, verb, 1, 0, lm.model)
    with pytest.raises(ConfigError, match="fewer examples of some class"):
        pick_demonstrations(task, verb, 2, 0, gpt)
    demos = pick_demonstrations(task, verb, 1, 0, gpt)
    assert demos[0] == ("a", "bad") and demos[1][1] == "good" and demos[1][0] in ("b", "c")

    out = tmp_path / "sim"
    run = run_pipeline(load_config(["--config_path", CFG, "--output_dir", str(out), "--prompt.scoring", "similarity",
                                    "--finetune.fgm_epsilon", "0.5", "--stages", "prompt,finetune,evaluate,export"]),
                       return_run=True)
    seed = run.report["seeds"][0]
    assert seed["prompt"]["scoring"] == "similarity" and seed["finetune"]["mode"] == "similarity"
    assert seed["prompt"]["label_words_source"] == "search near the rule words"
    words = seed["prompt"]["label_words"]
    assert words[0][0] == "terrible" and words[1][0] == "great"  # the rule words stay first
    cands = seed["prompt"]["label_word_candidates"]
    assert {c["class"] for c in cands[2:]} == {"negative", "positive"}
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("adv_loss" in r for r in recs if r.get("stage") == "finetune")
    meta = json.loads((out / "export" / "autogpt_jax.json").read_text())
    assert meta["mode"] == "similarity" and meta["similarity_scale"] == 20.0
    texts = ["a moving, beautifully acted film", "dull and lifeless"]
    loaded = predict_records(load_classifier(out / "export"), texts)
    np.testing.assert_allclose([[r["probabilities"][l] for l in meta["labels"]] for r in loaded],
                               run.classifier.probabilities(texts), atol=1e-5)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "autogpt_jax.train", "--config_path", CFG, *args],
                          capture_output=True, text=True, timeout=300)


def test_bad_task_input_fails_before_training(tmp_path):
    p = _cli("--prompt.template", "{text} It was good.", "--output_dir", str(tmp_path / "a"))
    assert p.returncode == 2 and "exactly one {mask}" in p.stderr and "Traceback" not in p.stderr
    p = _cli("--data.k_shot", "6000", "--output_dir", str(tmp_path / "b"))
    assert p.returncode == 2 and "k_shot=6000 needs 12000 examples" in p.stderr
    assert not (tmp_path / "b" / "metrics.jsonl").exists()
    p = _cli("--prompt.label_words", "bad", "--output_dir", str(tmp_path / "c"))
    assert p.returncode == 2 and "gives 1 classes; the task has 2" in p.stderr
    p = _cli("--finetune.lerning_rates", "1e-4", "--output_dir", str(tmp_path / "d"))
    assert p.returncode == 2 and "did you mean 'finetune.learning_rates'" in p.stderr


def test_distill_stage_trains_and_exports_a_student(tmp_path, tiny_bert_dir):
    from autogpt_jax.pipeline import run_pipeline
    from autogpt_jax.predict import load_classifier, predict_records

    out = tmp_path / "run"
    cfg = load_config(["--config_path", CFG, "--output_dir", str(out), "--stages", "prompt,finetune,evaluate,distill,export",
                       "--prompt.template", "{text} It was {mask}.", "--prompt.label_words", "terrible|great",
                       "--distill.student", str(tiny_bert_dir), "--distill.steps", "6", "--distill.batch_size", "8",
                       "--distill.max_unlabeled", "64", "--distill.eval_every", "3", "--distill.max_length", "32"])
    run = run_pipeline(cfg, return_run=True)
    report = json.loads((out / "report.json").read_text())
    d = report["seeds"][0]["distill"]
    assert d["pool"] == 64 and d["best_step"] in (3, 6) and d["student"] == str(tiny_bert_dir)
    assert 0 <= d["student_test"]["accuracy"] <= 1 and np.asarray(d["student_test"]["confusion"]).sum() == 2000
    assert d["teacher_test"]["accuracy"] == report["seeds"][0]["test"]["accuracy"]
    assert d["student_sentences_per_s"] > 0 and d["speedup"] == pytest.approx(
        d["student_sentences_per_s"] / d["teacher_sentences_per_s"])
    assert report["summary"]["student_test_accuracy"]["n"] == 1
    # The student is exported on its own and served by predict like any head model.
    sdir = out / "export" / "student"
    meta = json.loads((sdir / "autogpt_jax.json").read_text())
    assert meta["mode"] == "head" and meta["labels"] == ["negative", "positive"]
    texts = ["a moving, beautifully acted film", "dull and lifeless", ""]
    loaded = predict_records(load_classifier(sdir), texts)
    np.testing.assert_allclose([[r["probabilities"][l] for l in meta["labels"]] for r in loaded],
                               run.student.probabilities(texts), atol=1e-5)


def test_distill_loss_is_cross_entropy_to_soft_labels(tiny_bert_dir):
    import jax
    import jax.numpy as jnp

    from autogpt_jax.training import objectives

    m = hf.load_model(tiny_bert_dir, num_labels=2).model
    ids = jnp.asarray(np.random.default_rng(0).integers(1000, 2000, (3, 7)))
    mask = jnp.ones_like(ids)
    soft = jnp.asarray([[0.2, 0.8], [1.0, 0.0], [0.5, 0.5]], jnp.float32)
    loss, _ = objectives.distill_loss(m, {"input_ids": ids, "attention_mask": mask, "soft_labels": soft})
    logits = m.classify(m(ids, mask), mask, pooling="mean")
    want = -(soft * jax.nn.log_softmax(logits, -1)).sum(-1).mean()
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
