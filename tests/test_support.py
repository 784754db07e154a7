"""Customer-service QA: hand-over calibration, answer retrieval (loss, index, metrics), the
support run end to end with export and predict, and what the public types into it."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autogpt_jax import handover
from autogpt_jax.config import ConfigError, load_config
from autogpt_jax.errors import RetrievalError
from autogpt_jax.retrieval.answers import Answer, build_answers, fill_placeholders
from autogpt_jax.retrieval.encoder import infonce_loss
from autogpt_jax.retrieval.index import AnswerIndex, rank_metrics


def test_temperature_and_threshold_calibration():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 5)) * 2.0
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    gold = np.asarray([rng.choice(5, p=pi) for pi in p])
    # Logits three times too sharp: the fitted temperature undoes it and lowers the calibration error.
    t = handover.fit_temperature(3.0 * z, gold)
    assert 2.6 < t < 3.4
    assert handover.ece(handover.softmax(3.0 * z, t), gold) < handover.ece(handover.softmax(3.0 * z), gold)
    # In-scope confident and right, out-of-scope unsure: the threshold falls between them.
    conf_in, correct = np.asarray([0.9, 0.8, 0.95, 0.7]), np.asarray([True, True, True, False])
    th = handover.choose_threshold(conf_in, correct, np.asarray([0.3, 0.4, 0.5]))
    assert 0.5 < th <= 0.8
    # Without out-of-scope queries: keep 2/3 of the correct answers (quantile of their confidences).
    assert handover.choose_threshold(conf_in, correct, None, in_scope_recall=2 / 3) == pytest.approx(np.quantile([0.9, 0.8, 0.95], 1 / 3))
    h = handover.Handover(1.0, 0.6)
    logits = np.log(np.asarray([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8]]))
    m = handover.measure(h, logits, np.asarray([0, 0, 0]), np.log(np.asarray([[0.5, 0.5], [0.99, 0.01]])))
    assert m["in_scope_accuracy"] == pytest.approx(1 / 3) and m["in_scope_answered"] == pytest.approx(2 / 3)
    assert m["accuracy_when_answered"] == pytest.approx(0.5) and m["out_of_scope_recall"] == pytest.approx(0.5)


def test_placeholders_and_answer_groups():
    text = "Call {{Customer Support Phone Number}} or visit {{Website Name}}; see {{Order Details}} for {{Order Number Anonymized}} ({{113542617735902}})."
    out = fill_placeholders(text, {"website name": "shop.example"})
    assert out == "Call +1 555 0100 or visit shop.example; see Order Details for your order number (your order)."
    ds = {"intent": ["a", "a", "a", "b"], "answer": ["x {{Website}}", "x {{Website}}", "y", "z"]}
    answers = build_answers(ds, 5, None)
    assert sorted((a.intent, a.text) for a in answers) == [("a", "x acmeshop.example"), ("a", "y"), ("b", "z")]
    assert len(build_answers(ds, 1, None)) == 2
    # Responses that repeat one customer's details come after general ones.
    ds = {"intent": ["a"] * 3, "answer": ["Order 12345678 is cancelled", "Order {{Order Number Anonymized}} is gone",
                                          "Here is how to cancel an order"], "entity_value": ["12345678", "", ""]}
    for seed in range(4):
        assert build_answers(ds, 1, None, seed=seed)[0].text == "Here is how to cancel an order"


def test_rank_metrics():
    scores = np.asarray([[0.9, 0.8, 0.1], [0.9, 0.8, 0.1], [0.1, 0.2, 0.3]])
    m = rank_metrics(scores, ["a", "b", "a"], ["a", "b", "a"], ks=(1, 2))
    # ranks: 1, 2, 1
    assert m["recall@1"] == pytest.approx(2 / 3) and m["recall@2"] == 1.0 and m["mrr"] == pytest.approx((1 + 0.5 + 1) / 3)
    with pytest.raises(RetrievalError, match="no answer in the index for intent"):
        rank_metrics(scores, ["c", "a", "a"], ["a", "b", "a"])


@pytest.mark.multidevice
@pytest.mark.parametrize("n", [5, 37, 64])
def test_sharded_index_matches_one_device(n):
    assert jax.device_count() == 8
    rng = np.random.default_rng(n)
    emb = rng.normal(size=(n, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    answers = [Answer(str(i), "x") for i in range(n)]
    q = rng.normal(size=(3, 16)).astype(np.float32)
    single = AnswerIndex(emb, answers, shard=False)
    sharded = AnswerIndex(emb, answers)
    assert sharded.sharded and not single.sharded
    for k in (1, 3, 10):
        v1, i1 = single.search(q, k)
        v2, i2 = sharded.search(q, k)
        ref = np.argsort(-(q @ emb.T), axis=1)[:, :min(k, n)]
        np.testing.assert_array_equal(i1, ref)
        np.testing.assert_array_equal(i2, ref)
        np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-6)
    with pytest.raises(RetrievalError, match="empty"):
        AnswerIndex(np.zeros((0, 4)), [])


def test_infonce_loss_matches_reference(tiny_bert_dir):
    from autogpt_jax.models import hf
    from autogpt_jax.training import objectives

    lm = hf.load_model(tiny_bert_dir)
    rng = np.random.default_rng(0)
    B, L = 6, 10
    batch = {"q_ids": rng.integers(1000, 2000, (B, L)), "q_mask": np.ones((B, L), np.int32),
             "a_ids": rng.integers(1000, 2000, (B, L)), "a_mask": np.ones((B, L), np.int32),
             "group": np.asarray([0, 0, 1, 2, 2, 3])}
    batch["q_mask"][:, 7:] = 0
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    q = np.asarray(objectives.sentence_embeddings(lm.model, batch["q_ids"], batch["q_mask"]), np.float64)
    a = np.asarray(objectives.sentence_embeddings(lm.model, batch["a_ids"], batch["a_mask"]), np.float64)

    def ref(mask):
        s = q @ a.T / 0.1
        if mask:
            g = np.asarray(batch["group"])
            s = np.where((g[:, None] == g[None, :]) & ~np.eye(B, dtype=bool), -1e9, s)
        ls = lambda x: x - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) - x.max(1, keepdims=True)  # noqa: E731
        return 0.5 * (-np.diag(ls(s)).mean() - np.diag(ls(s.T)).mean())

    for mask in (True, False):
        loss, aux = infonce_loss(lm.model, batch, temperature=0.1, mask_same_group=mask)
        assert float(loss) == pytest.approx(ref(mask), rel=1e-4)
    assert ref(True) < ref(False)  # same-intent answers no longer count as wrong


def test_support_run_trains_measures_and_exports(support_run):
    out, rep = support_run
    r = rep["retrieval"]
    assert r["intents"] == 27 and r["answers"] == 27 * 3 and r["held_out_questions"] > 800
    assert r["train"]["steps"] == 6 and np.isfinite(r["train"]["final_loss"])
    for part in ("before", "after"):
        assert set(r[part]) == {"recall@1", "recall@5", "mrr"}
        assert 0.0 <= r[part]["recall@1"] <= r[part]["recall@5"] <= 1.0
    assert r["after"] != r["before"]  # training moved the encoder
    ho = rep["seeds"][0]["handover"]
    assert 0.0 <= ho["threshold"] <= 1.0 and ho["temperature"] > 0 and ho["out_of_scope"] == "clinc150"
    assert ho["test"]["out_of_scope_queries"] == 1000 and 0.0 <= ho["test"]["out_of_scope_recall"] <= 1.0
    # held-out questions are not training questions
    from autogpt_jax.data import sources

    ds = sources.load_dataset("bitext_support")
    assert not set(ds["train"]["question"]) & set(ds["test"]["question"])
    exp = out / "export"
    meta = json.loads((exp / "autogpt_jax.json").read_text())
    assert meta["retriever"] == "retriever" and meta["handover"]["threshold"] == ho["threshold"]
    rows = [json.loads(l) for l in (exp / "retriever" / "answers.jsonl").read_text().splitlines()]
    emb = np.load(exp / "retriever" / "answer_embeddings.npy")
    assert len(rows) == emb.shape[0] == 81 and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert not any("{{" in r["answer"] for r in rows) and any("tiny.example" in r["answer"] for r in rows)


def test_exported_retriever_loads_in_pytorch(support_run):
    import torch
    from transformers import AutoModel, AutoTokenizer

    d = support_run[0] / "export" / "retriever"
    rows = [json.loads(l) for l in (d / "answers.jsonl").read_text().splitlines()][:4]
    tok = AutoTokenizer.from_pretrained(str(d))
    model = AutoModel.from_pretrained(str(d)).eval()
    enc = tok([r["answer"] for r in rows], padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    e = (h * m).sum(1) / m.sum(1)
    e = torch.nn.functional.normalize(e, dim=-1).numpy()
    np.testing.assert_allclose(e, np.load(d / "answer_embeddings.npy")[:4], atol=1e-4)


def test_predict_answers_and_survives_bad_questions(support_run, tmp_path, capsys):
    from autogpt_jax.predict import main as predict_main
    from autogpt_jax.assistant import MAX_QUESTION_CHARS
    from autogpt_jax.export_format import load_assistant

    exp = support_run[0] / "export"
    questions = ["I want to cancel my order", "", "   ", ("where is my refund " * 1100)[:20000], "¿Dónde está mi pedido? Quiero un reembolso",
                 "😀😀🎉", "我的订单在哪里", "<script>alert(1)</script>", "a\x00b",
                 "😀" * MAX_QUESTION_CHARS + " I want to cancel my order", "cancel my\x00order"]
    inp = tmp_path / "q.jsonl"
    inp.write_text("".join(json.dumps({"text": q}) + "\n" for q in questions))
    capsys.readouterr()
    assert predict_main(["--model_dir", str(exp), "--input_file", str(inp)]) == 0
    recs = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert len(recs) == len(questions)
    meta = json.loads((exp / "autogpt_jax.json").read_text())
    for q, r in zip(questions, recs):
        assert set(r) == {"label", "intent", "confidence", "probabilities", "handover", "reason", "answers"}
        assert isinstance(r["handover"], bool) and 0.0 <= r["confidence"] <= 1.0
        if r["intent"] is None:  # cannot answer: says why, hands over
            assert r["handover"] and r["reason"].startswith("cannot answer") and r["answers"] == []
        else:
            assert r["intent"] in meta["labels"] and abs(sum(r["probabilities"].values()) - 1) < 1e-5
            assert len(r["answers"]) == 3 and len({a["intent"] for a in r["answers"]}) == 3
            assert all(set(a) == {"answer", "intent", "score", "id"} for a in r["answers"])
            assert [a["score"] for a in r["answers"]] == sorted((a["score"] for a in r["answers"]), reverse=True)
            assert r["handover"] == (r["confidence"] < meta["handover"]["threshold"])
            assert (r["reason"] is None) != r["handover"]
    assert recs[1]["reason"] == recs[2]["reason"] == "cannot answer: empty question"
    assert recs[5]["intent"] is None and "emoji" in recs[5]["reason"]
    assert recs[0]["intent"] is not None and recs[3]["intent"] is not None  # a long question is cut, not refused
    # Non-English questions are scored like any other (the threshold decides the hand-over, above).
    assert recs[4]["intent"] is not None and recs[6]["intent"] is not None
    # Only the first MAX_QUESTION_CHARS characters are read: emoji up to the cut, words after it.
    assert recs[9]["intent"] is None and "emoji" in recs[9]["reason"]
    assert load_assistant(exp).answer([questions[9][MAX_QUESTION_CHARS:]])[0]["intent"] is not None
    # A null byte is a space: the question is answered as if it had been typed without it.
    clean = load_assistant(exp).answer(["a b", "cancel my order"])
    for got, want in zip((recs[8], recs[10]), clean):
        assert got["intent"] == want["intent"] and got["confidence"] == pytest.approx(want["confidence"], abs=1e-6)
        assert [a["answer"] for a in got["answers"]] == [a["answer"] for a in want["answers"]]


def test_support_config_errors():
    from autogpt_jax.stages import preflight

    # The registry of out-of-scope sources lives in the data layer: checked before anything is built.
    with pytest.raises(ConfigError, match="not a registered source"):
        preflight(load_config(["--config_path", "tests/configs/tiny_support.yaml", "--handover.out_of_scope", "nope"]))
    for args, msg in [(["--retrieval.temperature", "0"], "retrieval.temperature must be > 0"),
                      (["--handover.enabled", "true", "--stages", "finetune,export"], "add evaluate to --stages"),
                      (["--data.k_shot", "-1"], "data.k_shot must be >= 0")]:
        with pytest.raises(ConfigError, match=msg):
            load_config(["--config_path", "tests/configs/tiny_support.yaml", *args])


def test_full_data_split_is_stratified_and_disjoint():
    from autogpt_jax.data import fewshot

    labels = np.repeat(np.arange(3), [10, 20, 31])
    tr, dv = fewshot.full_indices(labels, 7)
    assert len(set(tr) | set(dv)) == labels.size and not set(tr) & set(dv)
    assert [int((labels[dv] == c).sum()) for c in range(3)] == [1, 2, 3]
    np.testing.assert_array_equal(fewshot.full_indices(labels, 7)[1], dv)


def test_predict_records_carry_the_handover_of_a_classifier_export(support_run):
    from autogpt_jax.export_format import load_classifier
    from autogpt_jax.inference import predict_records

    clf = load_classifier(support_run[0] / "export")
    recs = predict_records(clf, ["where is my refund", "what's the weather on Mars"])
    for r in recs:
        assert set(r) == {"label", "probabilities", "confidence", "handover"}
        assert r["confidence"] == pytest.approx(max(r["probabilities"].values()))
        assert r["handover"] == (r["confidence"] < clf.handover.threshold)
