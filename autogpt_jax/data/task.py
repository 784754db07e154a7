"""The few-shot task of one split seed: K per class for training, a dev split, the (capped)
test split and the unlabelled task text."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from autogpt_jax.config import Config, DataConfig
from autogpt_jax.data import fewshot, files, sources
from autogpt_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Task:
    names: list[str]
    train: Any  # datasets.Dataset (K per class)
    dev: Any
    test: Any
    unlabeled: list[str]  # for adaptive training (capped at adapt.max_unlabeled)
    seed: int
    # The whole unlabelled pool (data.unlabeled or the labelled pool without its labels), every text
    # of the test split and of this seed's train and dev splits taken out: what self-training and
    # distillation label.
    pool: tuple[str, ...] = ()
    # dev was held out of the user's training rows (no dev file): it chooses the recipe, which then
    # trains again on train + dev (``all_labelled``)
    dev_held_out: bool = False

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "dev": len(self.dev), "test": len(self.test)}

    def all_labelled(self) -> tuple[list[str], np.ndarray]:
        """Every labelled row this seed may train on: train, and dev when it was held out of train."""
        texts, labels = list(self.train["text"]), np.asarray(self.train["label"], np.int32)
        if self.dev_held_out:
            texts += list(self.dev["text"])
            labels = np.concatenate([labels, np.asarray(self.dev["label"], np.int32)])
        return texts, labels

    def labelled_share(self) -> np.ndarray:
        """Each class's share of the labelled examples (train and dev)."""
        y = np.concatenate([np.asarray(self.train["label"]), np.asarray(self.dev["label"])]).astype(np.int64)
        return np.bincount(y, minlength=len(self.names)) / max(len(y), 1)


def _labelled(d: DataConfig):
    if d.train_file:
        return files.load_files(d.train_file, d.dev_file, d.test_file)
    if d.dataset:
        return sources.load_dataset(d.dataset)
    raise ConfigError(f"no labelled data: set --data.dataset (one of {sorted(sources.DATASETS)}) "
                      "or --data.train_file FILE")


def prepare_task(cfg: Config, seed: int, split_dir: Path | None = None) -> Task:
    """The task of split seed ``seed``; its train and dev splits are written under ``split_dir``
    (JSON Lines) when given."""
    d = cfg.data
    ds = _labelled(d)
    pool = ds["train"]
    names = list(pool.features["label"].names)
    if "test" not in ds:  # no test file: nothing is evaluated on test (dev figures only)
        ds["test"] = pool.select([])
    held_out = False
    if d.dev_file:
        train, _ = fewshot.fewshot_split(pool, d.k_shot, seed, dev=False)
        dev = ds["validation"]
    else:
        # your own files: data.dev_share of each class held out; a registered dataset's full split: 10%
        train, dev = fewshot.fewshot_split(pool, d.k_shot, seed, dev_fraction=d.dev_share if d.train_file else 0.1)
        held_out = d.k_shot == 0
    if split_dir is not None:
        fewshot.write_split(split_dir, "train", train)
        fewshot.write_split(split_dir, "dev", dev)
    if d.unlabeled or d.unlabeled_file:
        unlabeled = sources.load_unlabeled(d.unlabeled, d.unlabeled_file)
    else:  # the rest of the labelled pool, labels dropped (never the test split)
        unlabeled = list(pool["text"])
    test_texts = set(ds["test"]["text"])
    unlabeled = [t for t in unlabeled if t not in test_texts]  # a test text is never trained on
    seen = set(train["text"]) | set(dev["text"])
    full = tuple(t for t in unlabeled if t not in seen)
    cap = cfg.adapt.max_unlabeled
    if len(unlabeled) > cap:
        keep = np.sort(np.random.default_rng([seed, 3]).permutation(len(unlabeled))[:cap])
        unlabeled = [unlabeled[i] for i in keep]
    return Task(names, train, dev, fewshot.fixed_subset(ds["test"], d.max_test), unlabeled, seed, full, held_out)


def class_names(d: DataConfig) -> list[str]:
    """The task's class names in label order, read without building the task."""
    if d.train_file:
        return files.label_names(files.read_table(d.train_file, required=("text", "label")))
    if d.dataset:
        return list(sources.load_dataset(d.dataset)["train"].features["label"].names)
    raise ConfigError("no labelled data: set --data.train_file FILE (or --data.dataset NAME)")


def num_labels(d: DataConfig) -> int:
    """The number of classes, read without building the task."""
    return len(class_names(d))


def split_docs(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded (train, held-out) split of documents; ``fraction`` of them held out."""
    order = np.random.default_rng([seed, 7]).permutation(len(texts))
    n_eval = int(round(len(texts) * fraction)) if len(texts) > 1 else 0
    eval_idx = set(order[:n_eval].tolist())
    return [t for i, t in enumerate(texts) if i not in eval_idx], [texts[i] for i in sorted(eval_idx)]
