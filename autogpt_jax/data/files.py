"""User files: CSV/TSV and JSON Lines tables with ``text`` (and ``label``) columns, read into
``datasets`` splits with clear errors for what is missing or malformed."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from autogpt_jax.errors import DataError

log = logging.getLogger(__name__)


def datasets_module():
    """The ``datasets`` package, imported on first use (it is slow to import), progress bars off."""
    import datasets

    datasets.disable_progress_bars()
    return datasets


def labelled(rows_text: list[str], rows_label: list[str], names: list[str], extra: dict | None = None):
    ds = datasets_module()
    index = {n: i for i, n in enumerate(names)}
    features = ds.Features({"text": ds.Value("string"), "label": ds.ClassLabel(names=names),
                            **{k: ds.Value("string") for k in (extra or {})}})
    return ds.Dataset.from_dict({"text": rows_text, "label": [index[l] for l in rows_label], **(extra or {})},
                                features=features)




def read_table(path: str | Path, *, required: tuple[str, ...] = ("text",)) -> list[dict]:
    """Rows of a CSV/TSV or JSONL file, checked for the required columns. Non-UTF-8 bytes are
    replaced by U+FFFD and the repair is logged, rather than failing the run."""
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
        rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ","))
    else:
        raise DataError(f"{p}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")
    if not rows:
        raise DataError(f"{p}: the file has no rows")
    missing = [c for c in required if c not in rows[0]]
    if missing:
        hint = " Rename your text column to 'text'" + (" and the label column to 'label'" if "label" in missing else "") \
            if set(missing) <= {"text", "label"} else ""
        raise DataError(f"{p}: missing column(s) {missing}; found {sorted(rows[0])}.{hint}")
    return rows


def label_names(rows: list[dict]) -> list[str]:
    """The class names of labelled rows, in label order (sorted)."""
    return sorted({str(r["label"]).strip() for r in rows})


def load_files(train_file: str, dev_file: str | None = None, test_file: str | None = None):
    """User CSV/JSONL files with ``text`` and ``label`` columns. Labels are named by the train file;
    a dev/test label never seen in train is an error."""
    ds = datasets_module()
    tr = read_table(train_file, required=("text", "label"))
    names = [n for n in label_names(tr) if n]
    if len(names) < 2:
        raise DataError(f"{train_file}: a classifier needs at least two classes; the label column holds only {names}")

    def build(rows, path):
        no_label = [n for n, r in enumerate(rows, 2) if not str(r["label"] if r["label"] is not None else "").strip()]
        if no_label:
            raise DataError(f"{path}: {len(no_label)} row(s) have an empty label (first at line {no_label[0]}); "
                            "label every row or remove it")
        texts = [str(r["text"] if r["text"] is not None else "").strip() for r in rows]
        empty = sum(1 for t in texts if not t)
        if empty:
            log.warning("%s: dropping %d rows with empty text", path, empty)
        keep = [(t, str(r["label"]).strip()) for t, r in zip(texts, rows) if t]
        if not keep:
            raise DataError(f"{path}: every row has an empty text")
        unknown = sorted({l for _, l in keep} - set(names))
        if unknown:
            raise DataError(f"{path}: label(s) {unknown} do not occur in the train file {train_file} "
                            f"(train labels: {names})")
        return labelled([t for t, _ in keep], [l for _, l in keep], names)

    out = {"train": build(tr, train_file)}
    if dev_file:
        out["validation"] = build(read_table(dev_file, required=("text", "label")), dev_file)
    if test_file:
        out["test"] = build(read_table(test_file, required=("text", "label")), test_file)
    return ds.DatasetDict(out)
