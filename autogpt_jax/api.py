"""``FewShotClassifier``: the pipeline as an estimator (SetFit's and scikit-learn's shape).

    from autogpt_jax import FewShotClassifier
    clf = FewShotClassifier(backbone="auto").fit(texts, labels, unlabeled=pool)
    clf.predict(new_texts); clf.predict_proba(new_texts)   # columns in clf.classes_
    clf.save("runs/mine/export"); clf = FewShotClassifier.load("runs/mine/export")

``fit`` writes the rows as JSON Lines under the run directory and runs the same pipeline as
``python -m autogpt_jax.train --data.train_file ...`` (backbone screening, prompts for the labels,
adaptation on ``unlabeled``, fine-tuning, export); keyword arguments are config keys
(``finetune__mode="probe"`` or ``**{"finetune.mode": "probe"}``). ``save`` copies the export that
``predict``, the demo and the LangChain components load.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from autogpt_jax.config import load_config
from autogpt_jax.errors import DataError
from autogpt_jax.export_format import load_classifier
from autogpt_jax.pipeline import run_pipeline
from autogpt_jax.selection import cli_value, with_default_recipe


def _column(x: Any, what: str) -> list:
    """A list from a list, tuple, numpy array, pandas Series or Hugging Face datasets column."""
    if x is None:
        return []
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        x = x.tolist()
    if isinstance(x, (str, bytes)):
        raise DataError(f"{what} must be a sequence of values, not one string")
    try:
        return list(x)
    except TypeError:
        raise DataError(f"{what} must be a sequence (list, pandas Series, datasets column), got "
                        f"{type(x).__name__}") from None


def _write_rows(path: Path, texts: list, labels: list | None = None):
    with open(path, "w") as f:
        for i, t in enumerate(texts):
            row = {"text": "" if t is None else str(t)}
            if labels is not None:
                row["label"] = str(labels[i])
            f.write(json.dumps(row) + "\n")


class FewShotClassifier:
    """A text classifier trained by the few-shot pipeline. ``backbone``: ``auto`` (screen the
    packaged MiniLM and SmolLM2 recipes on dev), a packaged short name (``minilm-l6``,
    ``smollm2-135m``), a model directory or hub id. ``description``: the task in a sentence.
    ``output_dir``: the run directory (default: a new temporary one). Other keyword arguments are
    config keys, ``section__key=value``."""

    def __init__(self, backbone: str = "auto", *, description: str | None = None, output_dir: str | None = None,
                 seed: int = 0, progress: bool = True, **recipe: Any):
        self.backbone, self.description, self.output_dir, self.seed = backbone, description, output_dir, seed
        self.progress = progress
        self.recipe = {k.replace("__", "."): v for k, v in recipe.items()}
        self.classes_: list[str] = []
        self.report_: dict | None = None
        self._clf = None
        self._export: Path | None = None

    def _argv(self, out: Path, files: dict[str, Path]) -> list[str]:
        argv = ["--output_dir", str(out), "--seed", str(self.seed), "--model.name_or_path", self.backbone,
                "--logging.progress", str(self.progress).lower()]
        if self.description:
            argv += ["--task.description", self.description]
        for key, path in files.items():
            argv += [f"--data.{key}", str(path)]
        for key, v in self.recipe.items():
            argv += [f"--{key}", cli_value(v)]
        return with_default_recipe(argv)

    def fit(self, texts: Iterable[str], labels: Iterable, unlabeled: Iterable[str] | None = None,
            dev: tuple[Iterable[str], Iterable] | None = None) -> "FewShotClassifier":
        """Train on ``texts`` / ``labels`` (``dev``: (texts, labels) to choose on; without it a share of
        the rows is held out to choose, and the chosen recipe trains again on all of them)."""
        texts, labels = _column(texts, "texts"), _column(labels, "labels")
        if len(texts) != len(labels):
            raise DataError(f"texts and labels differ in length ({len(texts)} against {len(labels)})")
        out = Path(self.output_dir or tempfile.mkdtemp(prefix="autogpt_jax_fit_"))
        data = out / "data"
        data.mkdir(parents=True, exist_ok=True)
        files = {"train_file": data / "train.jsonl"}
        _write_rows(files["train_file"], texts, labels)
        pool = _column(unlabeled, "unlabeled")
        if pool:
            files["unlabeled_file"] = data / "unlabeled.jsonl"
            _write_rows(files["unlabeled_file"], pool)
        if dev is not None:
            dt, dl = _column(dev[0], "dev texts"), _column(dev[1], "dev labels")
            files["dev_file"] = data / "dev.jsonl"
            _write_rows(files["dev_file"], dt, dl)
        run = run_pipeline(load_config(self._argv(out, files)), return_run=True)
        self.report_ = run.report
        self._clf = run.classifier
        self.classes_ = list(self._clf.labels)
        self._export = out / "export"
        return self

    def _check(self):
        if self._clf is None:
            raise DataError("this FewShotClassifier is not fitted: call fit(texts, labels) or FewShotClassifier.load(dir)")

    def predict_proba(self, texts: Iterable[str], batch_size: int = 64) -> np.ndarray:
        """N × C class probabilities, columns in ``classes_``."""
        self._check()
        return np.asarray(self._clf.probabilities([str(t) for t in _column(texts, "texts")], batch_size))

    def predict(self, texts: Iterable[str], batch_size: int = 64) -> np.ndarray:
        """The most probable class name of each text."""
        p = self.predict_proba(texts, batch_size)
        return np.asarray(self.classes_, dtype=object)[p.argmax(-1)] if len(p) else np.asarray([], dtype=object)

    def save(self, directory: str | Path) -> Path:
        """Copy the export (``autogpt_jax.json`` + the Hugging Face model) to ``directory``."""
        self._check()
        if self._export is None or not (self._export / "autogpt_jax.json").is_file():
            raise DataError("nothing to save: this classifier was not trained with the export stage")
        d = Path(directory)
        if d.resolve() != self._export.resolve():
            if d.exists() and any(d.iterdir()):
                raise DataError(f"{d} exists and is not empty; choose a new directory")
            shutil.copytree(self._export, d, dirs_exist_ok=True)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "FewShotClassifier":
        """A classifier from an export directory (``save``'s, or a run's ``export/``)."""
        self = cls()
        self._clf = load_classifier(directory)
        self.classes_ = list(self._clf.labels)
        self._export = Path(directory)
        return self
