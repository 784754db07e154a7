"""Data layer: real datasets, K-shot protocol, resumable iterators, masking statistics, bad input."""

import json
import logging

import numpy as np
import pytest

from autogpt_jax.data import batching, fewshot, files, masking, sources
from autogpt_jax.errors import DataError
from autogpt_jax.models import hf


@pytest.fixture(scope="module")
def mr():
    return sources.load_dataset("mr")


@pytest.fixture(scope="module")
def tok(splade_dir):
    return hf.load_tokenizer(splade_dir)


def test_mr_test_set_is_fixed_balanced_and_disjoint(mr):
    test = mr["test"]
    assert len(test) == 2000 and np.bincount(test["label"]).tolist() == [1000, 1000]
    assert test.features["label"].names == ["negative", "positive"]
    again = sources.load_dataset("mr")["test"]
    assert list(again["text"]) == list(test["text"]) and list(again["label"]) == list(test["label"])
    test_texts = set(test["text"])
    assert len(test_texts) == 2000
    pool = mr["train"]
    assert not test_texts & set(pool["text"])
    for seed in fewshot.LMBFF_SEEDS:
        tr, dv = fewshot.fewshot_split(pool, 16, seed)
        assert not test_texts & (set(tr["text"]) | set(dv["text"]))
    # The unlabelled pool for adaptation is the leftover labelled pool (labels dropped): no test text.
    assert not test_texts & set(pool["text"])


def test_registered_datasets_shapes():
    air = sources.load_dataset("airline")
    assert air["train"].features["label"].names == ["negative", "neutral", "positive"]
    assert 14000 < len(air["train"]) + len(air["test"]) < 14700
    assert not set(air["test"]["text"]) & set(air["train"]["text"])
    b77 = sources.load_dataset("banking77")
    assert (len(b77["train"]), len(b77["test"])) == (10003, 3080)
    assert b77["train"].features["label"].num_classes == 77
    clinc = sources.load_dataset("clinc150")
    assert {k: len(v) for k, v in clinc.items()} == {"train": 15000, "validation": 3000, "test": 4500,
                                                    "oos_train": 100, "oos_validation": 100, "oos_test": 1000}
    names = clinc["train"].features["label"].names
    assert len(names) == 151 and names[-1] == "oos" and set(clinc["oos_test"]["label"]) == {150}
    bitext = sources.load_dataset("bitext_support")
    bt, btest = bitext["train"], bitext["test"]
    # 4,514 rows, 4,508 distinct questions once whitespace is normalised; 20% of each intent held out
    assert (len(bt), len(btest)) == (3607, 901) and bt.features["label"].num_classes == 27
    assert not set(bt["question"]) & set(btest["question"])
    counts = np.bincount(list(btest["label"]), minlength=27) / np.bincount(list(bt["label"]) + list(btest["label"]), minlength=27)
    assert np.all(np.abs(counts - 0.2) < 0.01)
    assert {"question", "answer", "intent", "category"} <= set(bt.column_names)
    assert "{{" in "".join(bt["answer"][:200])


def test_unlabelled_corpora():
    wiki = sources.load_unlabeled("wiki_summaries")
    news = sources.load_unlabeled("news")
    assert len(wiki) > 9000 and len(news) > 3000
    assert all(isinstance(t, str) and t for t in wiki[:100] + news[:100])


def test_kshot_balanced_deterministic_and_seed_dependent(mr, tmp_path):
    pool = mr["train"]
    splits = {}
    for seed in fewshot.LMBFF_SEEDS:
        tr, dv = fewshot.fewshot_split(pool, 16, seed)
        assert np.bincount(tr["label"]).tolist() == [16, 16] and np.bincount(dv["label"]).tolist() == [16, 16]
        assert not set(tr["text"]) & set(dv["text"])
        tr2, dv2 = fewshot.fewshot_split(pool, 16, seed)
        assert list(tr2["text"]) == list(tr["text"]) and list(dv2["text"]) == list(dv["text"])
        splits[seed] = set(tr["text"])
    assert len({frozenset(s) for s in splits.values()}) == 5
    path = fewshot.write_split(tmp_path / "splits" / "seed-13", "train", fewshot.fewshot_split(pool, 16, 13)[0])
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    assert len(rows) == 32 and {r["label"] for r in rows} == {"negative", "positive"}


def test_k_larger_than_a_class():
    labels = np.array([0] * 40 + [1] * 10)
    with pytest.raises(DataError, match=r"k_shot=8 needs 16 examples of class 'pos'.*only 10.*at most 5"):
        fewshot.kshot_indices(labels, 8, 13, names=["neg", "pos"])


def test_pretrain_iterator_resumes_exactly(tok):
    texts = sources.load_unlabeled("wiki_summaries", limit=150)
    packed = batching.pack(batching.tokenize(tok, texts), 32, style="bert", bos_id=tok.cls_token_id,
                           eos_id=tok.sep_token_id)
    a = batching.PretrainBatches(packed, 8, 5, objective="mlm", tokenizer=tok)
    for _ in range(7):
        next(a)
    saved = json.loads(json.dumps(a.state()))  # survives a JSON round trip, as in a checkpoint
    expect = [next(a) for _ in range(40)]  # crosses an epoch boundary
    b = batching.PretrainBatches(packed, 8, 5, objective="mlm", tokenizer=tok)
    b.restore(saved)
    for e, g in zip(expect, (next(b) for _ in range(40))):
        assert e.keys() == g.keys()
        for k in e:
            np.testing.assert_array_equal(e[k], g[k])


def test_example_batches_resume_and_buckets(tok):
    texts = ["short one", "a somewhat longer sentence about a film that was long", "mid length text here"] * 7
    seqs = batching.encode(tok, texts, 64)
    assert batching.encode(tok, texts, 64) is seqs  # memoised
    it = batching.ExampleBatches(seqs, {"labels": np.arange(len(seqs)) % 2}, 4, 3, pad_id=0)
    next(it)
    st = it.state()
    nxt = [next(it) for _ in range(9)]
    it2 = batching.ExampleBatches(seqs, {"labels": np.arange(len(seqs)) % 2}, 4, 3, pad_id=0)
    it2.restore(st)
    for e, g in zip(nxt, (next(it2) for _ in range(9))):
        np.testing.assert_array_equal(e["input_ids"], g["input_ids"])
        np.testing.assert_array_equal(e["labels"], g["labels"])
        assert e["input_ids"].shape[1] in batching.BUCKETS
    seen = []
    for idx, b in batching.eval_batches(seqs, 8, 0):
        assert b["input_ids"].shape == (8, 16)
        seen += [i for i in idx.tolist() if i >= 0]
    assert sorted(seen) == list(range(len(seqs)))


def _mask_many(tok, n_tokens=100_000, **kw):
    texts = sources.load_unlabeled("wiki_summaries", limit=1500)
    packed = batching.pack(batching.tokenize(tok, texts), 128, style="bert", bos_id=tok.cls_token_id,
                           eos_id=tok.sep_token_id)
    n = int(n_tokens / 120) + 1  # [CLS]/[SEP] and document separators are not maskable
    ids, maskable = packed.input_ids[:n], packed.maskable[:n]
    out = masking.mask_tokens(ids, maskable, np.random.default_rng(0), mask_id=tok.mask_token_id,
                              vocab_size=len(tok), **kw)
    return ids, maskable, out


@pytest.mark.parametrize("mode", ["random", "whole_word"])
def test_masking_rates_and_special_tokens(tok, mode):
    cont = masking.continuation_table(tok) if mode == "whole_word" else None
    ids, maskable, out = _mask_many(tok, rate=0.15, continuation=cont)
    w = out["mlm_weights"].astype(bool)
    rate = w.sum() / maskable.sum()
    assert maskable.sum() > 100_000 and abs(rate - 0.15) < 0.01
    rows = np.repeat(np.arange(ids.shape[0]), w.shape[1])[w.reshape(-1)]
    pos = out["mlm_positions"][w]
    assert maskable[rows, pos].all()  # special tokens ([CLS], [SEP]) never chosen
    special = ~maskable.astype(bool)
    assert (out["input_ids"][special] == ids[special]).all()
    np.testing.assert_array_equal(out["mlm_labels"][w], ids[rows, pos])
    replaced = out["input_ids"][rows, pos]
    frac_mask = (replaced == tok.mask_token_id).mean()
    frac_keep = (replaced == ids[rows, pos]).mean()
    assert abs(frac_mask - 0.8) < 0.02 and abs(frac_keep - 0.1) < 0.02
    if mode == "whole_word":  # a masked continuation piece always comes with its word start
        is_cont = cont[ids[rows, pos]]
        chosen = set(zip(rows.tolist(), pos.tolist()))
        for r, p in zip(rows[is_cont].tolist(), pos[is_cont].tolist()):
            q = p - 1
            while q > 0 and cont[ids[r, q]]:
                assert (r, q) in chosen
                q -= 1
            assert (r, q) in chosen


def test_prompt_aware_masking_hits_label_words_at_the_configured_rate(tok):
    # Prompted sentences "[CLS] <review> it was great . [SEP]": the label word is boosted.
    texts = [t + " it was great." for t in sources.load_unlabeled("wiki_summaries", limit=3000)]
    seqs = batching.encode(tok, [t[-200:] for t in texts], 64)
    ids, mask = batching.pad_batch(seqs, 0, buckets=(64,))
    great = tok.convert_tokens_to_ids("great")
    maskable = (mask == 1) & (ids != tok.cls_token_id) & (ids != tok.sep_token_id)
    boost = ids == great
    out = masking.mask_tokens(ids, maskable, np.random.default_rng(1), rate=0.15, mask_id=tok.mask_token_id,
                              vocab_size=len(tok), boost_BxL=boost, boost_rate=0.6)
    w = out["mlm_weights"].astype(bool)
    rows = np.repeat(np.arange(ids.shape[0]), w.shape[1])[w.reshape(-1)]
    hit = ids[rows, out["mlm_positions"][w]] == great
    rate = hit.sum() / boost.sum()
    assert abs(rate - 0.6) < 0.03
    overall = w.sum() / maskable.sum()
    assert abs(overall - 0.15) < 0.01  # the total budget is unchanged


# ---- bad input ------------------------------------------------------------------------------------


def test_bad_files(tmp_path, caplog):
    with pytest.raises(DataError, match="no such file"):
        files.load_files(str(tmp_path / "missing.csv"))
    p = tmp_path / "notext.csv"
    p.write_text("sentence,label\nhello,pos\nbye,neg\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['text'\]; found \['label', 'sentence'\]. Rename"):
        files.load_files(str(p))
    e = tmp_path / "empty.csv"
    e.write_text("text,label\n")
    with pytest.raises(DataError, match="the file has no rows"):
        files.load_files(str(e))
    tr = tmp_path / "train.jsonl"
    tr.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    dv = tmp_path / "dev.jsonl"
    dv.write_text('{"text": "meh", "label": "neutral"}\n')
    with pytest.raises(DataError, match=r"label\(s\) \['neutral'\] do not occur in the train file"):
        files.load_files(str(tr), str(dv))
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text,label\ncaf\xe9 is nice,pos\nawful,neg\n".encode("latin-1"))
    with caplog.at_level(logging.WARNING):
        ds = files.load_files(str(bad))
    assert "not valid UTF-8" in caplog.text and ds["train"][0]["text"] == "caf\ufffd is nice"
    with pytest.raises(DataError, match="unknown dataset 'imdb'"):
        sources.load_dataset("imdb")
    with pytest.raises(DataError, match="unsupported file type"):
        files.read_table(tmp_path / "x.parquet") if (tmp_path / "x.parquet").write_text("x") else None
