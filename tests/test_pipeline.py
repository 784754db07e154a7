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
