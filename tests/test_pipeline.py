"""The few-shot pipeline end to end on a tiny real model, plus its bad-input checks."""

import json

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


def _recompute(clf, ds) -> dict:
    """Accuracy, macro-F1 and confusion matrix from the classifier's own predictions, by scikit-learn."""
    from sklearn.metrics import confusion_matrix, f1_score

    pred = clf.logits(list(ds["text"])).argmax(-1)
    gold = np.asarray(ds["label"])
    return {"accuracy": float((pred == gold).mean()), "macro_f1": float(f1_score(gold, pred, average="macro")),
            "confusion": confusion_matrix(gold, pred, labels=range(len(clf.labels))).tolist()}


def _mr_test(n: int = 200):
    from autogpt_jax.data import fewshot, sources

    return fewshot.fixed_subset(sources.load_dataset("mr")["test"], n)


@pytest.mark.slow  # a whole pipeline run
def test_pipeline_end_to_end_and_predict_matches(tmp_path, capsys):
    """Every stage on splade-tiny with a two-point lr grid: the grid point with the best dev
    accuracy is chosen, the kept model is that run's best dev step, the reported test figures are
    the model's own, and predict (library and CLI) serves the same model."""
    from autogpt_jax.pipeline import run_pipeline
    from autogpt_jax.export_format import load_classifier
    from autogpt_jax.inference import predict_records
    from autogpt_jax.predict import main as predict_main

    out = tmp_path / "run"
    # Scanned layers in the run; predict below loads the export unrolled (auto: 2 layers) and must agree.
    cfg = load_config(["--config_path", CFG, "--output_dir", str(out), "--finetune.learning_rates", "1e-5,3e-3",
                       "--model.scan_layers", "true"])
    run = run_pipeline(cfg, return_run=True)
    report = json.loads((out / "report.json").read_text())
    seed = report["seeds"][0]
    assert seed["sizes"] == {"train": 16, "dev": 16, "test": 200}
    assert seed["prompt"]["template"] in [c["template"] for c in seed["prompt"]["template_candidates"]]
    assert len(seed["prompt"]["label_words"]) == 2 and seed["prompt"]["label_word_candidates"]
    assert seed["adapt"]["steps"] == 6
    # The lr grid: one run per learning rate, the best dev accuracy wins (the first on ties).
    grid, chosen = seed["finetune"]["grid"], seed["finetune"]["chosen"]
    assert [g["learning_rate"] for g in grid] == [1e-5, 3e-3]
    best = max(grid, key=lambda g: g["best_dev_accuracy"])
    assert chosen == best and 0 < chosen["best_step"] <= 8
    # The model kept is the chosen run's best dev step: its dev accuracy is the one that won.
    dev = sources_split(out, "dev")
    assert _recompute(run.classifier, dev)["accuracy"] == pytest.approx(chosen["best_dev_accuracy"])
    assert seed["dev"]["accuracy"] == pytest.approx(chosen["best_dev_accuracy"])
    # Test figures are the classifier's own predictions on the (capped) MR test split.
    want = _recompute(run.classifier, _mr_test())
    t = seed["test"]
    assert t["accuracy"] == pytest.approx(want["accuracy"]) and t["macro_f1"] == pytest.approx(want["macro_f1"])
    assert t["confusion"] == want["confusion"] and np.asarray(t["confusion"]).sum() == 200
    assert report["summary"]["test_accuracy"] == {"mean": t["accuracy"], "std": 0.0, "n": 1}
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
    capsys.readouterr()
    assert predict_main(["--model_dir", str(out / "export"), "--input_file", str(inp)]) == 0
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in rows] == [r["label"] for r in loaded]
    np.testing.assert_allclose([[r["probabilities"][l] for l in meta["labels"]] for r in rows], mem, atol=1e-5)


def sources_split(out, name: str):
    """A split the run wrote to out/splits/seed-13/<name>.jsonl, as a Dataset with text and label ids."""
    import datasets

    rows = [json.loads(l) for l in (out / "splits" / "seed-13" / f"{name}.jsonl").read_text().splitlines()]
    names = ["negative", "positive"]
    return datasets.Dataset.from_dict({"text": [r["text"] for r in rows], "label": [names.index(r["label"]) for r in rows]})


@pytest.mark.slow  # a whole pipeline run
def test_head_mode_learns_and_joint_loss_is_task_plus_lambda_mlm(tmp_path):
    from autogpt_jax.pipeline import run_pipeline

    out = tmp_path / "head"
    run = run_pipeline(load_config(["--config_path", CFG, "--output_dir", str(out), "--stages", "finetune,evaluate",
                                    "--finetune.mode", "head", "--finetune.learning_rates", "3e-3",
                                    "--finetune.steps", "12"]), return_run=True)
    seed = run.report["seeds"][0]
    assert seed["finetune"]["mode"] == "head" and run.classifier.mode == "head" and "prompt" not in seed
    # The head learned: its training loss fell, and it classifies its own training split better than chance.
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r.get("stage") == "finetune" and "loss" in r]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert _recompute(run.classifier, sources_split(out, "train"))["accuracy"] > 0.6
    assert seed["test"]["accuracy"] == pytest.approx(_recompute(run.classifier, _mr_test())["accuracy"])

    out = tmp_path / "joint"
    report = run_pipeline(load_config(["--config_path", CFG, "--output_dir", str(out), "--stages",
                                       "finetune,evaluate", "--finetune.mlm_weight", "0.5"]))
    assert report["seeds"][0]["finetune"]["mlm_weight"] == 0.5
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r.get("stage") == "finetune" and "loss" in r]
    assert len(steps) == 8
    for r in steps:  # L = L_task + λ·L_mlm at every logged step, both parts positive
        assert r["task_loss"] > 0 and r["mlm_loss"] > 0
        assert r["loss"] == pytest.approx(r["task_loss"] + 0.5 * r["mlm_loss"], rel=1e-5)


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


@pytest.mark.slow  # a whole pipeline run
def test_prompt_scoring_auto_and_similarity_pipeline(tmp_path, tiny_encoder_dir):
    """auto picks similarity for a checkpoint without an MLM head; the similarity pipeline (label
    words searched near the rule words, FGM on) runs end to end and its export predicts the same."""
    import types

    from autogpt_jax.models.gpt2 import GPT2, GPT2Config
    from autogpt_jax.models.build import Backbone
    from autogpt_jax.pipeline import run_pipeline
    from autogpt_jax.prompts.search import pick_demonstrations
    from autogpt_jax.stages.task import prompt_mode
    from autogpt_jax.export_format import load_classifier
    from autogpt_jax.inference import predict_records

    lm = hf.load_model(tiny_encoder_dir)  # a sentence encoder without an MLM head, as MiniLM ships
    assert lm.fresh and all(p.startswith(("mlm.", "pooler.")) for p in lm.fresh)
    cfg = load_config(["--config_path", CFG])
    def ctx(cfg, model, fresh):  # what prompt_mode reads of a RunContext
        bb = Backbone(model, None, "", tuple(fresh))
        return types.SimpleNamespace(cfg=cfg, backbone=bb, kind=bb.kind)

    assert prompt_mode(ctx(cfg, lm.model, lm.fresh)) == "similarity"
    assert prompt_mode(ctx(cfg, lm.model, [])) == "prompt"
    gpt = GPT2(GPT2Config(vocab_size=64, n_positions=16, hidden_size=8, num_layers=1, num_heads=2,
                          intermediate_size=16), rngs=__import__("flax").nnx.Rngs(0))
    sim = load_config(["--config_path", CFG, "--prompt.scoring", "similarity"])
    with pytest.raises(ConfigError, match="needs a BERT-family sentence encoder"):
        prompt_mode(ctx(sim, gpt, []))
    from autogpt_jax.prompts.templates import Verbalizer

    train = {"text": ["a", "b", "c"], "label": [0, 1, 1]}
    verb = Verbalizer((("bad",), ("good",)))
    with pytest.raises(ConfigError, match="prompt.demonstrations needs a decoder"):
        pick_demonstrations(train, verb, 1, 0, lm.model)
    with pytest.raises(ConfigError, match="fewer examples of some class"):
        pick_demonstrations(train, verb, 2, 0, gpt)
    demos = pick_demonstrations(train, verb, 1, 0, gpt)
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


def _cli(capsys, *args) -> tuple[int, str]:
    """The training entry point in this process (exit code, stderr)."""
    from autogpt_jax.train import main

    capsys.readouterr()
    code = main(["--config_path", CFG, *args])
    return code, capsys.readouterr().err


def test_bad_task_input_fails_before_training(tmp_path, capsys):
    code, err = _cli(capsys, "--prompt.template", "{text} It was good.", "--output_dir", str(tmp_path / "a"))
    assert code == 2 and "exactly one {mask}" in err and "Traceback" not in err
    code, err = _cli(capsys, "--data.k_shot", "6000", "--output_dir", str(tmp_path / "b"))
    assert code == 2 and "k_shot=6000 needs 12000 examples" in err
    assert not (tmp_path / "b" / "metrics.jsonl").exists()
    code, err = _cli(capsys, "--prompt.label_words", "bad", "--output_dir", str(tmp_path / "c"))
    assert code == 2 and "name the class of each set of words" in err and "negative=word" in err
    code, err = _cli(capsys, "--finetune.lerning_rates", "1e-4", "--output_dir", str(tmp_path / "d"))
    assert code == 2 and "did you mean 'finetune.learning_rates'" in err
    code, err = _cli(capsys, "--data.max_test", "-1", "--output_dir", str(tmp_path / "e"))
    assert code == 2 and "data.max_test must be >= 0" in err


def test_distill_stage_trains_and_exports_a_student(sentiment_run, tiny_bert_dir):
    from autogpt_jax.export_format import load_classifier
    from autogpt_jax.inference import predict_records

    out, run = sentiment_run
    report = json.loads((out / "report.json").read_text())
    d = report["seeds"][0]["distill"]
    assert d["pool"] == 64 and d["held_out"] == 12 and d["select"] == "agreement" and d["student"] == str(tiny_bert_dir)
    # The step kept agrees most with the teacher on the held-out pool texts (ties: the later step).
    evals = [e for e in d["evals"] if e["step"] > 0]
    assert [e["step"] for e in evals] == [3, 6]
    top = max(e["teacher_agreement"] for e in evals)
    assert d["best_step"] == max(e["step"] for e in evals if e["teacher_agreement"] == top)
    assert d["best_teacher_agreement"] == top
    # Teacher's and student's test figures are their own predictions on the test split, recomputed here.
    test = _mr_test()
    assert d["teacher_test"]["accuracy"] == pytest.approx(_recompute(run.classifier, test)["accuracy"])
    want = _recompute(run.student, test)
    assert d["student_test"]["accuracy"] == pytest.approx(want["accuracy"])
    assert d["student_test"]["confusion"] == want["confusion"] and np.asarray(want["confusion"]).sum() == 200
    # The student kept is that step's model: its dev accuracy is the one recorded at that step.
    assert _recompute(run.student, sources_split(out, "dev"))["accuracy"] == pytest.approx(d["best_dev_accuracy"])
    assert run.student.mode == "head" and run.student.model is not run.classifier.model
    assert d["student_sentences_per_s"] > 0 and d["speedup"] == pytest.approx(
        d["student_sentences_per_s"] / d["teacher_sentences_per_s"])
    assert report["summary"]["student_test_accuracy"] == {"mean": d["student_test"]["accuracy"], "std": 0.0, "n": 1}
    # The student is exported on its own and served by predict like any head model.
    sdir = out / "export" / "student"
    meta = json.loads((sdir / "autogpt_jax.json").read_text())
    assert meta["mode"] == "head" and meta["labels"] == ["negative", "positive"]
    texts = ["a moving, beautifully acted film", "dull and lifeless", ""]
    loaded = predict_records(load_classifier(sdir), texts)
    np.testing.assert_allclose([[r["probabilities"][l] for l in meta["labels"]] for r in loaded],
                               run.student.probabilities(texts), atol=1e-5)


def test_distill_holds_out_pool_rows_for_selection():
    from autogpt_jax.stages.distill import held_out

    rows = held_out(100, 1000, 7)
    assert len(rows) == 20 and len(set(rows.tolist())) == 20 and np.all(np.diff(rows) > 0) and rows.max() < 100
    assert len(held_out(100, 5, 7)) == 5 and len(held_out(4, 1000, 7)) == 0
    assert np.array_equal(held_out(100, 5, 7), held_out(100, 5, 7)) and not np.array_equal(
        held_out(100, 20, 7), held_out(100, 20, 8))


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


@pytest.mark.slow  # a whole pipeline run
def test_several_split_seeds_with_baselines_give_mean_and_std(tmp_path):
    """--eval.seeds runs every stage once per LM-BFF split and reports mean ± std over them;
    --eval.compare adds the zero-shot, prompt fine-tuning and head fine-tuning baselines on the same splits."""
    from autogpt_jax.export_format import load_classifier
    from autogpt_jax.pipeline import run_pipeline

    out = tmp_path / "seeds"
    run = run_pipeline(load_config(["--config_path", CFG, "--output_dir", str(out),
                                    "--stages", "finetune,evaluate,export", "--eval.seeds", "21,13",
                                    "--eval.compare", "true", "--eval.head_learning_rates", "1e-3",
                                    "--finetune.steps", "4"]), return_run=True)
    report = run.report
    seeds = report["seeds"]
    assert [s["seed"] for s in seeds] == [21, 13]
    # The export is data.split_seed's model (13, run second), and the report says so.
    assert report["exported_seed"] == 13 and report["export"]["seed"] == 13 and run.exported.seed == 13
    texts = list(_mr_test()["text"])  # the run's own test set: its shapes are compiled already
    exported = load_classifier(out / "export").probabilities(texts)
    by_seed = {st.seed: st.classifier.probabilities(texts) for st in run.seeds}
    np.testing.assert_allclose(exported, by_seed[13], atol=1e-5)
    assert np.abs(exported - by_seed[21]).max() > 1e-4
    trains = [{json.loads(l)["text"] for l in (out / "splits" / f"seed-{k}" / "train.jsonl").read_text().splitlines()}
              for k in (13, 21)]
    assert len(trains[0]) == len(trains[1]) == 16 and trains[0] != trains[1]  # two different splits
    for name, get in (("test_accuracy", lambda s: s["test"]["accuracy"]),
                      ("test_macro_f1", lambda s: s["test"]["macro_f1"]),
                      ("zero_shot_accuracy", lambda s: s["baselines"]["zero_shot"]["accuracy"]),
                      ("prompt_ft_accuracy", lambda s: s["baselines"]["prompt_ft"]["accuracy"]),
                      ("head_ft_accuracy", lambda s: s["baselines"]["head_ft"]["accuracy"])):
        xs = [get(s) for s in seeds]
        assert report["summary"][name] == {"mean": pytest.approx(np.mean(xs)), "std": pytest.approx(np.std(xs)), "n": 2}
    for s in seeds:
        # Without adaptation the prompt fine-tuning baseline is the same run as the real fine-tuning.
        assert s["finetune"]["same_as"] == "baselines.prompt_ft"
        assert s["baselines"]["prompt_ft"]["accuracy"] == s["test"]["accuracy"]
        assert set(s["baselines"]) == {"zero_shot", "prompt_ft", "head_ft"}
    # The zero-shot baseline is the untrained prompt: the same for both splits (same test set, no training).
    assert seeds[0]["baselines"]["zero_shot"] == seeds[1]["baselines"]["zero_shot"]


def test_without_data_split_seed_among_the_seeds_the_best_dev_seed_is_exported():
    from autogpt_jax.pipeline import exported_seed
    from autogpt_jax.stages.context import SeedState

    states = [SeedState(seed=k, model=None, results={"dev": {"accuracy": a}}) for k, a in ((13, 0.5), (21, 0.75),
                                                                                           (42, 0.75))]
    assert exported_seed(states, split_seed=87).seed == 21  # best dev; ties go to the earlier seed
    assert exported_seed(states, split_seed=42).seed == 42  # data.split_seed when it ran


@pytest.mark.slow  # a whole pipeline run
def test_early_stopping_ends_a_run_that_stopped_improving(tmp_path):
    from autogpt_jax.pipeline import run_pipeline

    # A learning rate too small to change any prediction: dev accuracy stays where it starts.
    report = run_pipeline(load_config(["--config_path", CFG, "--output_dir", str(tmp_path / "es"), "--stages",
                                       "finetune", "--finetune.learning_rates", "1e-12", "--finetune.steps", "40",
                                       "--finetune.eval_every", "2", "--finetune.early_stop_patience", "2"]))
    ft = report["seeds"][0]["finetune"]["chosen"]
    # evaluations at 2 (the best so far), 4 and 6 (no better): stop after two evaluations without improvement
    assert ft["stopped_early"] and ft["steps_run"] == 6 and ft["best_step"] == 6
    full = run_pipeline(load_config(["--config_path", CFG, "--output_dir", str(tmp_path / "no_es"), "--stages",
                                     "finetune", "--finetune.learning_rates", "1e-12", "--finetune.steps", "8",
                                     "--finetune.eval_every", "2", "--finetune.early_stop_patience", "0"]))
    assert not full["seeds"][0]["finetune"]["chosen"]["stopped_early"]
    assert full["seeds"][0]["finetune"]["chosen"]["steps_run"] == 8


def test_own_tsv_and_jsonl_files_with_all_the_data(tmp_path):
    """--data.train_file (TSV) / --data.test_file (JSONL) and --data.k_shot 0: the whole train file
    is used, a stratified share of it (data.dev_share, 25%) as dev, the test file as test."""
    from autogpt_jax.pipeline import run_pipeline

    mr = _mr_test(2000)
    rows = list(zip(mr["text"], mr["label"]))
    names = ["neg", "pos"]
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\n" + "".join(f"{t.replace(chr(9), ' ')}\t{names[y]}\n" for t, y in rows[:60]))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"text": t, "label": names[y]}) + "\n" for t, y in rows[60:90]))
    n_per = np.bincount([y for _, y in rows[:60]], minlength=2)
    out = tmp_path / "own"
    run = run_pipeline(load_config(["--config_path", CFG, "--output_dir", str(out),
                                    "--data.train_file", str(train), "--data.test_file", str(test),
                                    "--data.k_shot", "0", "--stages", "finetune,evaluate",
                                    "--prompt.label_words", "neg=terrible|pos=great"]), return_run=True)
    seed = run.report["seeds"][0]
    n_dev = int(sum(max(1, round(0.25 * n)) for n in n_per))
    assert seed["sizes"] == {"train": 60 - n_dev, "dev": n_dev, "test": 30}
    assert run.classifier.labels == names
    dev = [json.loads(l) for l in (out / "splits" / "seed-13" / "dev.jsonl").read_text().splitlines()]
    trn = [json.loads(l) for l in (out / "splits" / "seed-13" / "train.jsonl").read_text().splitlines()]
    assert sorted(r["text"] for r in dev + trn) == sorted(t.replace("\t", " ") for t, _ in rows[:60])
    assert {r["label"] for r in dev} == set(names)
    assert np.asarray(seed["test"]["confusion"]).sum() == 30
