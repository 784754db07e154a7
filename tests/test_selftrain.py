"""Prompt ensembles, calibration, pool labelling and self-training: the arithmetic by hand, the
selection's rules, the labels on 8 devices, and a tiny run end to end through predict."""

import json

import numpy as np
import pytest

from autogpt_jax.calibration import content_free_bias, fit_bias, fit_prior_bias, prior_matching_bias
from autogpt_jax.config import ConfigError, load_config
from autogpt_jax.evaluation import log_softmax
from autogpt_jax.ensemble import Ensemble, combine, member_weights
from autogpt_jax.errors import DataError
from autogpt_jax.pseudolabels import select_confident, soft_targets, word_dropout

CFG = "tests/configs/tiny_fewshot.yaml"


def test_ensemble_combination_is_the_weighted_mean_of_log_probabilities():
    rng = np.random.default_rng(0)
    members = [rng.normal(size=(5, 3)) * s for s in (1.0, 3.0, 0.5)]
    accs = [0.9, 0.6, 0.75]
    w = member_weights(accs, "dev")
    np.testing.assert_allclose(w, np.asarray(accs) / sum(accs))
    np.testing.assert_allclose(member_weights(accs, "uniform"), [1 / 3] * 3)
    # By hand: log p = logits - logsumexp(logits), weighted by accuracy / total accuracy.
    hand = sum(a / sum(accs) * (m - np.log(np.exp(m).sum(-1, keepdims=True))) for a, m in zip(accs, members))
    np.testing.assert_allclose(combine(members, w), hand, rtol=1e-5, atol=1e-5)
    # The combination of members that agree is that member's own log-probabilities.
    np.testing.assert_allclose(combine([members[0]] * 3, member_weights(accs, "uniform")), log_softmax(members[0]),
                               rtol=1e-5, atol=1e-6)


def test_prior_calibration_removes_a_constructed_class_bias():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    clean = rng.normal(size=(300, 3)) + 2.5 * np.eye(3)[y]  # a good classifier...
    bias = np.asarray([3.0, 0.0, -2.0])
    skewed = clean + bias  # ...that leans to class 0
    acc = lambda lg: float((lg.argmax(-1) == y).mean())  # noqa: E731
    assert acc(skewed) < acc(clean) - 0.15
    b = fit_prior_bias(skewed, y)
    # The fitted bias undoes the constructed one (up to a constant shift, which softmax ignores).
    np.testing.assert_allclose(b - b.mean(), -(bias - bias.mean()), atol=0.5)  # (shrunk a little by its L2)
    assert acc(skewed + b) >= acc(clean) - 0.02


def test_pool_calibration_removes_a_constructed_class_bias_without_labels():
    """The pool's labels are never read: only that its classes are as frequent as the prior says."""
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(2), 500)  # a balanced pool
    clean = rng.normal(size=(1000, 2)) + 2.0 * np.eye(2)[y]
    skewed = clean + np.asarray([0.0, 1.5])  # leans positive, as a fine-tuned prompt did on MR
    acc = lambda lg: float((lg.argmax(-1) == y).mean())  # noqa: E731
    assert (skewed.argmax(-1) == 1).mean() > 0.65 and acc(skewed) < acc(clean) - 0.05
    b = prior_matching_bias(skewed, np.asarray([0.5, 0.5]))
    np.testing.assert_allclose(np.exp(log_softmax(skewed + b)).mean(0), [0.5, 0.5], atol=1e-5)
    np.testing.assert_allclose(b[1] - b[0], -1.5, atol=0.2)
    assert acc(skewed + b) >= acc(clean) - 0.01
    # A skewed prior is matched too (three classes).
    x3 = rng.normal(size=(600, 3))
    b3 = prior_matching_bias(x3, np.asarray([0.6, 0.3, 0.1]))
    np.testing.assert_allclose(np.exp(log_softmax(x3 + b3)).mean(0), [0.6, 0.3, 0.1], atol=1e-5)


def test_content_free_calibration_cancels_the_prompt_bias():
    rng = np.random.default_rng(2)
    cf = rng.normal(size=(3, 2))
    b = content_free_bias(cf)
    p = np.exp(log_softmax(cf)).mean(0)
    np.testing.assert_allclose(b - b.mean(), -np.log(p) + np.log(p).mean(), rtol=1e-5)
    # With the content-free inputs scored by a biased prompt, the calibrated scores of one input are
    # those of the unbiased prompt: the bias falls out.
    one = rng.normal(size=(1, 2))
    shift = np.asarray([[4.0, -1.0]])
    a = log_softmax(one + content_free_bias(cf[:1]))
    c = log_softmax(one + shift + content_free_bias(cf[:1] + shift))
    np.testing.assert_allclose(a, c, atol=1e-5)


class _Scored:
    """A classifier stand-in: fixed logits per text (content-free inputs included)."""

    class tokenizer:
        mask_token = None

    def __init__(self, table: dict[str, np.ndarray]):
        self.table, self.logit_bias = table, None

    def logits(self, texts, batch_size, progress=None):
        return np.stack([self.table[t] for t in texts])


def test_evaluate_and_the_dev_check_share_one_log_loss():
    from autogpt_jax.calibration import dev_scores
    from autogpt_jax.evaluation import evaluate, log_loss

    table = {"a": np.asarray([2.0, 0.0]), "b": np.asarray([0.0, 1.0]), "c": np.asarray([3.0, 1.0])}
    y = np.asarray([0, 1, 1])
    x = np.stack(list(table.values()))
    # By hand: -mean(log softmax(x)[i, y_i]), with log(1 + e^-d) the loss of a margin d.
    want = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0)) + np.log1p(np.exp(2.0))) / 3
    assert abs(log_loss(x, y) - want) < 1e-12 and log_loss(x[:0], y[:0]) == 0.0
    clf = _Scored(table)
    clf.labels = ["neg", "pos"]
    res = evaluate(clf, {"text": list(table), "label": y}, batch_size=2)
    assert res["log_loss"] == dev_scores(x, y)["log_loss"] == log_loss(x, y)
    assert res["accuracy"] == dev_scores(x, y)["accuracy"] == 2 / 3


def test_calibration_is_kept_only_where_it_does_not_lower_dev_accuracy():
    from autogpt_jax.calibration import calibrate, dev_scores

    y = np.asarray([0, 0, 1, 1])
    dev = {f"d{i}": v for i, v in enumerate(np.asarray([[2.0, 0.0], [0.5, 0.0], [0.0, 1.0], [0.0, 2.0]]))}
    # The content-free inputs lean to class 0 where dev does not: the correction (-1.5 on class 0)
    # flips dev text d1, so the dev check drops it.
    leaning = {"N/A": np.asarray([1.5, 0.0]), "": np.asarray([1.5, 0.0])}
    clf = _Scored({**dev, **leaning})
    rep = calibrate(clf, "content_free", list(dev), y, check_dev=True)
    assert clf.logit_bias is None and rep["dev_check"]["kept"] is False and rep["bias"] == [0.0, 0.0]
    assert rep["dev_check"]["uncalibrated"] == dev_scores(np.stack(list(dev.values())), y)
    assert rep["dev_check"]["calibrated"]["accuracy"] == 0.75 and rep["dev_check"]["uncalibrated"]["accuracy"] == 1.0
    # Without the check the bias stands.
    rep = calibrate(clf, "content_free", list(dev), y)
    assert "dev_check" not in rep and clf.logit_bias[0] < clf.logit_bias[1]
    # Dev skewed the way the content-free inputs are: the correction helps and is kept.
    skewed = {k: v + np.asarray([1.5, 0.0]) for k, v in dev.items()}
    clf = _Scored({**skewed, **leaning})
    rep = calibrate(clf, "content_free", list(skewed), y, check_dev=True)
    assert rep["dev_check"]["kept"] is True and rep["dev_check"]["calibrated"]["accuracy"] == 1.0
    np.testing.assert_allclose(clf.logit_bias, rep["content_free_bias"], atol=1e-6)


def test_fit_bias_both_is_the_prior_fitted_after_the_content_free_correction():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 64)
    dev = rng.normal(size=(64, 2)) + 2.0 * np.eye(2)[y] + np.asarray([1.0, -1.0])
    cf = rng.normal(size=(3, 2)) + np.asarray([2.0, 0.0])
    b, rep = fit_bias("both", dev_logits=dev, dev_labels=y, content_free_logits=cf)
    by_hand = content_free_bias(cf) + fit_prior_bias(dev + content_free_bias(cf), y)
    np.testing.assert_allclose(b, by_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rep["content_free_bias"], content_free_bias(cf), rtol=1e-6)
    np.testing.assert_allclose(fit_bias("prior", dev_logits=dev, dev_labels=y)[0], fit_prior_bias(dev, y), atol=1e-6)
    np.testing.assert_allclose(fit_bias("pool", pool_logits=dev, prior=np.asarray([0.5, 0.5]))[0],
                               prior_matching_bias(dev, np.asarray([0.5, 0.5])), atol=1e-6)
    with pytest.raises(ValueError, match="pool calibration needs unlabelled task texts"):
        fit_bias("pool", pool_logits=dev[:0], prior=np.asarray([0.5, 0.5]))
    with pytest.raises(ValueError, match="calibration method 'dev'"):
        fit_bias("dev", dev_logits=dev, dev_labels=y)


def test_selection_is_class_balanced_thresholded_and_ordered():
    probs = np.asarray([[0.99, 0.01], [0.95, 0.05], [0.91, 0.09], [0.6, 0.4], [0.2, 0.8], [0.03, 0.97],
                        [0.08, 0.92], [0.5, 0.5]])
    idx = select_confident(probs, per_class=5, threshold=0.9)
    # class 0 has three above 0.9 (0, 1, 2), class 1 two (5, 6): two of each, most confident first
    assert sorted(idx.tolist()) == [0, 1, 5, 6]
    assert idx.tolist() == [0, 5, 1, 6]
    assert select_confident(probs, per_class=1, threshold=0.9).tolist() == [0, 5]
    with pytest.raises(DataError, match=r"no pool text of class\(es\) \[1\] reaches the confidence threshold 0.98"):
        select_confident(probs, per_class=5, threshold=0.98)
    # min_per_class: class 1 has one text above 0.95 (5), fewer than 2, so each class keeps its two
    # most confident predictions whatever their confidence (class 1: 5 then 6 at 0.92)
    assert select_confident(probs, per_class=5, threshold=0.95, min_per_class=2).tolist() == [0, 5, 1, 6]
    # ... at most per_class; enough above the threshold: the threshold holds
    assert select_confident(probs, per_class=1, threshold=0.96, min_per_class=2).tolist() == [0, 5]
    assert select_confident(probs, per_class=5, threshold=0.9, min_per_class=2).tolist() == [0, 5, 1, 6]
    assert select_confident(probs, per_class=5, threshold=0.9, min_per_class=3).tolist() == [0, 5, 1, 6, 2, 4]
    with pytest.raises(DataError, match=r"predicts no pool text as class\(es\) \[1\]"):
        select_confident(probs[:4], per_class=5, threshold=0.9, min_per_class=2)
    t = soft_targets(np.log(probs[:2]), 2.0)
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
    assert t[0, 0] < probs[0, 0] and t[0, 0] > 0.5  # softened, same winner
    np.testing.assert_array_equal(soft_targets(np.log(probs[:2]), 0.0), [[1, 0], [1, 0]])
    noisy = word_dropout(["one two three four five six seven eight nine ten"] * 20, 0.3, 0)
    assert all(1 <= len(n.split()) < 10 for n in noisy[:5]) and len(set(noisy)) > 1


def test_the_kept_generation_is_the_best_on_dev_and_self_training_must_show_it_helped():
    from autogpt_jax.stages.selftrain import kept_generation

    d = lambda acc, ll: {"dev_accuracy": acc, "dev_log_loss": ll}  # noqa: E731
    # [the teacher, generation 1, generation 2]
    assert kept_generation("best", [d(0.8, 0.5), d(0.9, 0.6), d(0.85, 0.3)]) == 1
    assert kept_generation("best", [d(0.8, 0.5), d(0.8, 0.4), d(0.8, 0.45)]) == 1  # ties: lower log-loss
    assert kept_generation("best", [d(0.8, 0.5), d(0.8, 0.5), d(0.7, 0.1)]) == 0  # full tie: the earlier
    assert kept_generation("best", [d(0.9, 0.5), d(0.8, 0.1)]) == 0
    assert kept_generation("last", [d(0.9, 0.5), d(0.8, 0.6), d(0.7, 0.9)]) == 2
    with pytest.raises(ConfigError, match="selftrain.keep must be best or last, got 'first'"):
        load_config(["--config_path", CFG, "--selftrain.keep", "first"])


def test_consistency_term_is_the_kl_between_the_clean_and_noised_views(tiny_bert_dir):
    import jax
    import jax.numpy as jnp

    from autogpt_jax.models import hf
    from autogpt_jax.training import objectives

    lm = hf.load_model(tiny_bert_dir, num_labels=2)
    rng = np.random.default_rng(0)
    view = lambda: {"input_ids": jnp.asarray(rng.integers(5, 500, (4, 12)), jnp.int32),  # noqa: E731
                    "attention_mask": jnp.ones((4, 12), jnp.int32)}
    task_batch, clean, noised = {**view(), "labels": jnp.asarray([0, 1, 1, 0])}, view(), view()
    logits = objectives.head_class_logits("mean")
    loss = objectives.consistency_loss(objectives.head_loss("mean"), logits, 0.5)
    both = {**task_batch, **{f"cons/{k}": v for k, v in clean.items()},
            **{f"cons/noised/{k}": v for k, v in noised.items()}}
    total, aux = loss(lm.model, both)
    task, _ = objectives.head_loss("mean")(lm.model, task_batch)
    lp, lq = (np.asarray(jax.nn.log_softmax(logits(lm.model, b), -1), np.float64) for b in (clean, noised))
    kl = float(np.mean(np.sum(np.exp(lp) * (lp - lq), -1)))
    assert kl > 0 and float(aux["consistency"]) == pytest.approx(kl, rel=1e-4)
    assert float(total) == pytest.approx(float(task) + 0.5 * kl, rel=1e-5)
    same = {**both, **{f"cons/noised/{k}": v for k, v in clean.items()}}  # one view twice: no term
    assert float(loss(lm.model, same)[1]["consistency"]) == pytest.approx(0.0, abs=1e-6)


def test_the_pool_never_holds_a_test_train_or_dev_text(tmp_path):
    from autogpt_jax.data.task import prepare_task

    cfg = load_config(["--config_path", CFG, "--output_dir", str(tmp_path)])
    task = prepare_task(cfg, 13)
    from autogpt_jax.data import sources

    full_test = set(sources.load_dataset("mr")["test"]["text"])
    seen = full_test | set(task.train["text"]) | set(task.dev["text"])
    assert len(task.pool) > 5000 and not seen & set(task.pool)
    # A user's unlabelled file that contains test and dev texts: they are taken out too.
    f = tmp_path / "pool.jsonl"
    rows = [next(iter(full_test)), task.dev["text"][0], "an unlabelled review nobody has labelled"]
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    task = prepare_task(load_config(["--config_path", CFG, "--data.unlabeled_file", str(f)]), 13)
    assert task.pool == ("an unlabelled review nobody has labelled",)


def _cli(capsys, *args):
    from autogpt_jax.train import main

    code = main(["--config_path", CFG, *args])
    return code, capsys.readouterr().err


def test_bad_self_training_and_ensemble_input_fails_before_training(tmp_path, capsys, splade_dir):
    with pytest.raises(ConfigError, match="selftrain.generations must be >= 1"):
        load_config(["--config_path", CFG, "--selftrain.generations", "0"])
    with pytest.raises(ConfigError, match=r"selftrain.threshold must be in \[0, 1\)"):
        load_config(["--config_path", CFG, "--selftrain.threshold", "1.0"])
    with pytest.raises(ConfigError, match="selftrain.min_per_class must be >= 0, got -1"):
        load_config(["--config_path", CFG, "--selftrain.min_per_class", "-1"])
    with pytest.raises(ConfigError, match="distill.select must be agreement, dev or last"):
        load_config(["--config_path", CFG, "--distill.select", "best"])
    with pytest.raises(ConfigError, match="distill.select agreement needs distill.holdout >= 1"):
        load_config(["--config_path", CFG, "--distill.holdout", "0"])
    with pytest.raises(ConfigError, match=r"selftrain.ipet retrains every prompt-ensemble member .* \(got 1\)"):
        load_config(["--config_path", CFG, "--stages", "prompt,finetune,selftrain", "--selftrain.ipet", "true"])
    with pytest.raises(ConfigError, match="distill.teacher must be ensemble or final, got 'best'"):
        load_config(["--config_path", CFG, "--distill.teacher", "best"])
    with pytest.raises(ConfigError, match="prompt.calibration_pool must be >= 1, got 0"):
        load_config(["--config_path", CFG, "--prompt.calibrate", "pool", "--prompt.calibration_pool", "0"])
    code, err = _cli(capsys, "--stages", "prompt,finetune,selftrain", "--output_dir", str(tmp_path / "a"),
                     "--prompt.ensemble", "5", "--prompt.template", "{text} It was {mask}.",
                     "--prompt.label_words", "negative=terrible|positive=great", "--prompt.ensemble_seeds", "2")
    assert code == 2 and "prompt.ensemble 5 is larger than its 2 candidates" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": _mr_test_text()}) + "\n")  # only a test text: nothing is left
    code, err = _cli(capsys, "--stages", "prompt,finetune,selftrain", "--output_dir", str(tmp_path / "b"),
                     "--data.unlabeled_file", str(empty))
    assert code == 2 and "the selftrain stage labels unlabelled task text, and this task has none" in err
    code, err = _cli(capsys, "--stages", "prompt,finetune", "--output_dir", str(tmp_path / "d"),
                     "--data.unlabeled_file", str(empty), "--prompt.calibrate", "pool")
    assert code == 2 and "prompt.calibrate pool labels unlabelled task text, and this task has none" in err
    code, err = _cli(capsys, "--stages", "prompt,selftrain", "--output_dir", str(tmp_path / "c"))
    assert code == 2 and "add finetune to --stages" in err
    for d in "abcd":
        assert not (tmp_path / d / "metrics.jsonl").exists() or "finetune" not in (tmp_path / d / "metrics.jsonl").read_text()


def test_distill_teacher_is_the_ensemble_unless_told_final():
    from autogpt_jax.stages.context import SeedState
    from autogpt_jax.stages.distill import teacher_of

    last, ens = object(), object()
    assert teacher_of(SeedState(seed=0, model=None, classifier=last, ensemble=ens), "ensemble") == (ens, "ensemble")
    assert teacher_of(SeedState(seed=0, model=None, classifier=last, ensemble=ens), "final") == (last, "task model")
    # a run without an ensemble: the task model whatever is asked
    assert teacher_of(SeedState(seed=0, model=None, classifier=last), "ensemble") == (last, "task model")


def _mr_test_text() -> str:
    from autogpt_jax.data import sources

    return sources.load_dataset("mr")["test"]["text"][0]


@pytest.mark.multidevice
def test_pool_labels_on_8_devices_are_those_of_one(tmp_path, splade_dir, tiny_llama_dir):
    """Every device labels its share of each batch (padded and packed paths alike): the gathered
    labels, in pool order, equal the single-device ones."""
    import jax

    from autogpt_jax.config import MeshConfig
    from autogpt_jax.inference import make_classifier
    from autogpt_jax.models import hf
    from autogpt_jax.prompts.templates import Template, Verbalizer
    from autogpt_jax.pseudolabels import label_pool
    from autogpt_jax.training import sharding as shd

    assert jax.device_count() == 8
    lm = hf.load_model(splade_dir)
    tok = lm.tokenizer()
    texts = [f"review {i}: " + " ".join(["good"] * (i % 7) + ["bad"] * (i % 5)) for i in range(75)]
    args = ("prompt", lm.model, tok, ["negative", "positive"], Template("{text} It was {mask}."),
            Verbalizer((("terrible",), ("great",))))
    one = make_classifier(*args, max_length=32).logits(texts, 16)
    mesh = shd.make_mesh(MeshConfig())
    assert dict(mesh.shape)["data"] == 8
    eight, cached = label_pool(make_classifier(*args, max_length=32, mesh=mesh), texts, tmp_path, 16)
    assert not cached
    np.testing.assert_allclose(eight, one, rtol=1e-4, atol=1e-4)
    again, cached = label_pool(make_classifier(*args, max_length=32, mesh=mesh), texts, tmp_path, 16)
    assert cached and np.array_equal(again, eight)
    # A decoder's prompts packed into rows: the rows are split over the devices.
    dec = hf.load_model(tiny_llama_dir)
    dargs = ("prompt", dec.model, dec.tokenizer(), ["negative", "positive"],
             Template("Review: {text}{answer}The sentiment is {mask}"), Verbalizer((("negative",), ("positive",))))
    one = make_classifier(*dargs, max_length=48).logits(texts, 16)
    clf8 = make_classifier(*dargs, max_length=48, mesh=mesh)
    assert clf8.pack and clf8._prefix is not None
    np.testing.assert_allclose(clf8.logits(texts, 16), one, rtol=1e-4, atol=1e-4)


def _spy_on_students(monkeypatch, selftrain) -> tuple[list, list]:
    """Record the weights every self-training student starts from and the student trained."""
    starts, students = [], []
    real_grid = selftrain.grid_finetune

    def grid_spy(ctx, task, model, *a, **kw):
        starts.append(model)
        m, rep = real_grid(ctx, task, model, *a, **kw)
        students.append(m)
        return m, rep

    monkeypatch.setattr(selftrain, "grid_finetune", grid_spy)
    return starts, students


@pytest.mark.slow  # a whole pipeline run
def test_ensemble_and_self_training_end_to_end_and_predict_serves_them(tmp_path, monkeypatch, tiny_bert_dir):
    """Two ensemble members (two seeds of the fixed prompt), both calibrated; two self-training
    generations whose students start from the fine-tuning stage's starting weights and whose
    teachers are the ensemble, then generation 1's student; the distilled student learns the
    ensemble's labels, not the last generation's; selftrain.keep best keeps the generation with the
    best dev accuracy (made generation 1 here), the export serves that student, and predict's
    output equals the in-run predictions."""
    from autogpt_jax.export_format import load_classifier
    from autogpt_jax.inference import predict_records
    from autogpt_jax.pipeline import run_pipeline
    from autogpt_jax.stages import distill, selftrain

    starts, students = _spy_on_students(monkeypatch, selftrain)
    teachers, distill_teachers = [], []
    real_label = selftrain.label_pool

    def label_spy(clf, *a, **kw):
        teachers.append(clf)
        return real_label(clf, *a, **kw)

    def distill_label_spy(clf, *a, **kw):
        distill_teachers.append(clf)
        return real_label(clf, *a, **kw)

    monkeypatch.setattr(selftrain, "label_pool", label_spy)
    monkeypatch.setattr(distill, "label_pool", distill_label_spy)
    real_dev, made = selftrain.dev_figures, iter([0.5, 0.9, 0.7])  # the teacher, generation 1, generation 2

    def dev_spy(clf, task, batch_size):
        return {**real_dev(clf, task, batch_size), "dev_accuracy": next(made)}

    monkeypatch.setattr(selftrain, "dev_figures", dev_spy)
    out = tmp_path / "run"
    cfg = load_config(["--config_path", CFG, "--output_dir", str(out), "--stages",
                       "prompt,adapt,finetune,selftrain,evaluate,distill,export",
                       "--prompt.template", "{text} It was {mask}.", "--prompt.label_words", "negative=terrible|positive=great",
                       "--prompt.ensemble", "2", "--prompt.ensemble_seeds", "2", "--prompt.calibrate", "both",
                       "--prompt.calibrate_check", "false",
                       "--selftrain.generations", "2", "--selftrain.per_class", "3", "--selftrain.growth", "2",
                       "--selftrain.threshold", "0", "--selftrain.max_unlabeled", "48", "--selftrain.steps", "4",
                       "--selftrain.consistency_weight", "0.5",
                       "--finetune.learning_rates", "3e-3", "--eval.compare", "true",
                       "--distill.student", str(tiny_bert_dir), "--distill.steps", "4", "--distill.batch_size", "8",
                       "--distill.max_unlabeled", "32", "--distill.eval_every", "2", "--distill.max_length", "32",
                       "--distill.select", "last"])
    run = run_pipeline(cfg, return_run=True)
    seed = run.seeds[0]
    rep = json.loads((out / "report.json").read_text())["seeds"][0]
    ens = rep["ensemble"]
    assert [m["seed"] for m in ens["members"]] == [0, 1] and ens["calibrate"] == "both"
    assert sum(m["weight"] for m in ens["members"]) == pytest.approx(1.0)
    assert set(ens["test_ladder"]) == {"single", "single_calibrated", "ensemble_uniform", "ensemble_dev"}
    gens = rep["selftrain"]["generations"]
    assert rep["selftrain"]["consistency_weight"] == 0.5
    assert [g["kept_per_class"] for g in gens] == [3, 6] and [g["examples"] for g in gens] == [16 + 6, 16 + 12]
    # The students start where fine-tuning started (the adapted weights), not from a teacher.
    assert len(starts) == 2 and all(s is seed.pretuned for s in starts)
    # Generation 1's teacher is the ensemble, generation 2's is generation 1's student.
    assert isinstance(teachers[0], Ensemble) and len(teachers[0].members) == 2
    assert teachers[1].model is students[0]
    st = rep["selftrain"]
    assert [g["dev_accuracy"] for g in gens] == [0.9, 0.7] and st["teacher_dev"]["dev_accuracy"] == 0.5
    assert st["keep"] == "best" and st["kept_generation"] == 1 and seed.model is students[0]
    assert run.classifier.model is students[0] and seed.finetune == gens[0]["student"]
    assert rep["test"]["accuracy"] == pytest.approx(gens[0]["test_accuracy"])
    # distill.teacher ensemble (the default): the student learns the ensemble's labels, and the
    # report compares it with the ensemble, not with the last generation it was not taught by.
    assert distill_teachers == [teachers[0]]
    d = rep["distill"]
    assert d["teacher_source"] == "ensemble" and d["teacher"] == "Ensemble"
    assert d["teacher_test"]["accuracy"] == pytest.approx(ens["test_ladder"]["ensemble_dev"])
    assert (out / "export" / "student").is_dir()
    # The export serves the kept student, calibrated; predict gives the in-run predictions.
    texts = ["a moving, beautifully acted film", "dull and lifeless", "an ordinary movie"]
    served = load_classifier(out / "export")
    assert served.logit_bias is not None
    np.testing.assert_allclose([[r["probabilities"][l] for l in served.labels] for r in predict_records(served, texts)],
                               run.classifier.probabilities(texts), atol=1e-5)


@pytest.mark.slow  # a whole pipeline run
def test_ipet_retrains_every_member_on_the_others_labels_and_serves_the_new_ensemble(tmp_path, monkeypatch):
    """selftrain.ipet with two members (two seeds of the fixed prompt): each member's student starts
    from fine-tuning's starting weights and learns the pool texts the *other* member labels; the
    task model, the export and predict are the ensemble of the two students."""
    from autogpt_jax.export_format import load_classifier
    from autogpt_jax.inference import predict_records
    from autogpt_jax.pipeline import run_pipeline
    from autogpt_jax.stages import selftrain

    starts, students = _spy_on_students(monkeypatch, selftrain)
    labelled, taught = [], []
    real_label, real_pseudo = selftrain.label_pool, selftrain.pseudo_data

    def label_spy(clf, *a, **kw):
        out = real_label(clf, *a, **kw)
        labelled.append((clf, out[0]))
        return out

    def pseudo_spy(ctx, task, pool, logits, generation, member=0):
        taught.append((member, np.asarray(logits)))
        return real_pseudo(ctx, task, pool, logits, generation, member)

    monkeypatch.setattr(selftrain, "label_pool", label_spy)
    monkeypatch.setattr(selftrain, "pseudo_data", pseudo_spy)
    out = tmp_path / "run"
    cfg = load_config(["--config_path", CFG, "--output_dir", str(out), "--stages", "prompt,finetune,selftrain,export",
                       "--prompt.template", "{text} It was {mask}.", "--prompt.label_words", "negative=terrible|positive=great",
                       "--prompt.ensemble", "2", "--prompt.ensemble_seeds", "2",
                       "--selftrain.ipet", "true", "--selftrain.keep", "last",
                       "--selftrain.per_class", "3", "--selftrain.threshold", "0",
                       "--selftrain.max_unlabeled", "32", "--selftrain.steps", "4",
                       "--finetune.learning_rates", "3e-3", "--eval.compare", "true"])
    run = run_pipeline(cfg, return_run=True)
    seed = run.seeds[0]
    rep = json.loads((out / "report.json").read_text())["seeds"][0]
    first = rep["ensemble"]["members"]
    # The pool is labelled by each first-generation member alone (the fine-tuned ones), in order.
    teachers = [c for c, _ in labelled]
    assert len(teachers) == 2 and teachers[0].model is not teachers[1].model
    assert not any(t.model is s for t in teachers for s in students)
    # Member 1 learns the labels of member 2 and member 2 those of member 1 (one other member: its
    # log-probabilities), both students starting where fine-tuning started.
    from autogpt_jax.evaluation import log_softmax

    pool_logits = [lg for _, lg in labelled]
    assert [m for m, _ in taught] == [1, 2]
    for (m, lg), other in zip(taught, pool_logits[::-1]):
        np.testing.assert_allclose(lg, log_softmax(other), atol=1e-5)
    assert len(starts) == 2 and all(s is seed.pretuned for s in starts)
    gen = rep["selftrain"]["generations"][0]
    assert rep["selftrain"]["ipet"] and [m["taught_by"] for m in gen["members"]] == [[2], [1]]
    assert rep["selftrain"]["kept_generation"] == 1  # keep last
    assert [m["seed"] for m in gen["ensemble_members"]] == [m["seed"] for m in first] == [0, 1]
    assert [m["examples"] for m in gen["members"]] == [16 + 6, 16 + 6]
    # The task model is the ensemble of the two students, and that is what is exported and served.
    assert isinstance(run.classifier, Ensemble) and [m.model for m in run.classifier.members] == students
    assert seed.model is students[0]
    served = load_classifier(out / "export")
    assert isinstance(served, Ensemble) and len(served.members) == 2
    texts = ["a moving, beautifully acted film", "dull and lifeless", "an ordinary movie"]
    np.testing.assert_allclose([[r["probabilities"][l] for l in served.labels] for r in predict_records(served, texts)],
                               run.classifier.probabilities(texts), atol=1e-5)
    assert gen["test_accuracy"] == pytest.approx(float((run.classifier.logits(list(seed.task.test["text"])).argmax(-1)
                                                        == np.asarray(seed.task.test["label"])).mean()))


@pytest.mark.slow  # a whole pipeline run
def test_an_exported_ensemble_is_served_whole(tmp_path):
    from autogpt_jax.export_format import load_classifier
    from autogpt_jax.predict import main as predict_main
    from autogpt_jax.pipeline import run_pipeline

    out = tmp_path / "run"
    cfg = load_config(["--config_path", CFG, "--output_dir", str(out), "--stages", "prompt,finetune,evaluate,export",
                       "--prompt.ensemble", "2", "--prompt.search_steps", "0", "--prompt.ensemble_weighting", "uniform",
                       "--prompt.calibrate", "pool", "--prompt.calibration_pool", "40",
                       "--prompt.calibrate_check", "false"])
    run = run_pipeline(cfg, return_run=True)
    assert isinstance(run.classifier, Ensemble)
    rep = json.loads((out / "report.json").read_text())["seeds"][0]
    # two templates ranked zero-shot on dev; the members are the top two, equally weighted
    ranked = [c["template"] for c in rep["prompt"]["template_candidates"]]
    assert [m["template"] for m in rep["ensemble"]["members"]] == ranked[:2]
    assert [m["weight"] for m in rep["ensemble"]["members"]] == [0.5, 0.5]
    meta = json.loads((out / "export" / "autogpt_jax.json").read_text())
    assert [m["dir"] for m in meta["ensemble"]["members"]] == [".", "members/1"]
    served = load_classifier(out / "export")
    assert isinstance(served, Ensemble) and [m.template.source for m in served.members] == ranked[:2]
    # Each member, as served, predicts the labelled examples' class share (balanced) on average
    # over the 40 pool texts it was calibrated on.
    from autogpt_jax.pseudolabels import pool_subset

    task = run.seeds[0].task
    pool = pool_subset(task.pool, 40, task.seed)
    assert len(pool) == 40 and not set(pool) & set(task.test["text"])
    for m, info in zip(served.members, rep["ensemble"]["members"]):
        assert info["calibration"]["method"] == "pool" and info["calibration"]["prior"] == [0.5, 0.5]
        np.testing.assert_allclose(m.probabilities(pool).mean(0), [0.5, 0.5], atol=1e-3)
    texts = ["a moving, beautifully acted film", "dull and lifeless"]
    np.testing.assert_allclose(served.logits(texts), run.classifier.logits(texts), atol=1e-4)
    f = tmp_path / "in.jsonl"
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    assert predict_main(["--model_dir", str(out / "export"), "--input_file", str(f), "--output_file",
                         str(tmp_path / "o.jsonl")]) == 0
    got = [json.loads(l) for l in (tmp_path / "o.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([[g["probabilities"][l] for l in served.labels] for g in got],
                               run.classifier.probabilities(texts), atol=1e-5)


def test_chat_rule_templates_ask_for_every_class():
    from autogpt_jax.prompts.templates import CHAT_TEMPLATES, rule_prompts

    three, verb = rule_prompts("sentiment", ["negative", "neutral", "positive"], decoder=True, chat=True)
    assert verb.words == (("negative",), ("neutral",), ("positive",))
    assert all("negative, neutral or positive" in t for t in three[:2])
    assert all("{labels}" in t for t in CHAT_TEMPLATES["sentiment"][:2])  # no two-class wording is fixed in them


def test_sentences_per_s_times_the_model_not_the_memo(splade_dir, monkeypatch):
    """The timed pass must run the model again: Classifier.logits memoises its last text lists,
    and an ensemble's members each keep their own memo."""
    from autogpt_jax.ensemble import Ensemble
    from autogpt_jax.evaluation import sentences_per_s
    from autogpt_jax.inference import Classifier, make_classifier
    from autogpt_jax.models import hf
    from autogpt_jax.prompts.templates import Template, Verbalizer

    lm = hf.load_model(splade_dir)
    runs = []
    scored = Classifier._logits
    monkeypatch.setattr(Classifier, "_logits", lambda self, *a: runs.append(id(self)) or scored(self, *a))
    members = [make_classifier("prompt", lm.model, lm.tokenizer(), ["negative", "positive"],
                               Template("{text} It was {mask}."), Verbalizer(((w,), ("great",))), max_length=32)
               for w in ("terrible", "bad")]
    texts = ["a fine film", "a dull film"]
    assert sentences_per_s(members[0], texts, 2) > 0 and runs == [id(members[0])] * 2
    members[1].logits(texts, 2)
    runs.clear()  # both members' memos now hold these texts: only the timed pass runs them
    assert sentences_per_s(Ensemble(members, np.ones(2)), texts, 2) > 0
    assert runs == [id(m) for m in members]
