"""Prompt templates and verbalizers.

Template syntax: plain text with the placeholders ``{text}`` (the input), optionally ``{text_b}``,
and exactly one ``{mask}`` (where the model predicts the label word), e.g.
``"{text} All in all, it was {mask}."``. Only the input is truncated, so the mask always survives.

A verbalizer maps each class to one or more label words; a word that the tokenizer splits into
several pieces contributes each piece with an equal share, and a class scores the weighted mean
of its pieces' logits at the mask.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from autogpt_jax.config import ConfigError

_PLACEHOLDER = re.compile(r"\{(text|text_b|mask)\}")


@dataclasses.dataclass(frozen=True)
class Template:
    source: str

    def __post_init__(self):
        names = _PLACEHOLDER.findall(self.source)
        if names.count("mask") != 1:
            raise ConfigError(f"template {self.source!r} must contain exactly one {{mask}} (found {names.count('mask')}); "
                              "e.g. '{text} It was {mask}.'")
        if names.count("text") != 1:
            raise ConfigError(f"template {self.source!r} must contain {{text}} exactly once")
        stray = re.findall(r"\{[^}]*\}", _PLACEHOLDER.sub("", self.source))
        if stray:
            raise ConfigError(f"template {self.source!r} has unknown placeholder(s) {stray}; use {{text}}, {{text_b}}, {{mask}}")

    def parts(self) -> list[str]:
        """Literal pieces and placeholder names in order."""
        out, pos = [], 0
        for m in _PLACEHOLDER.finditer(self.source):
            if m.start() > pos:
                out.append(self.source[pos:m.start()])
            out.append("{" + m.group(1) + "}")
            pos = m.end()
        if pos < len(self.source):
            out.append(self.source[pos:])
        return out

    def fill(self, text: str, word: str) -> str:
        """The prompted sentence with the mask replaced by ``word`` (for adaptive training)."""
        return self.source.replace("{text}", text).replace("{mask}", word).replace("{text_b}", "")

    def describe(self, word: str) -> str:
        """The class description a sentence encoder compares inputs with (similarity scoring): the
        template without its inputs, the mask replaced by the label word ("{text} It was {mask}."
        with "great" → "It was great.")."""
        s = self.source.replace("{text_b}", "").replace("{text}", "").replace("{mask}", word)
        return re.sub(r"\s+", " ", s).strip(" ?,:") or word

    def encode(self, tokenizer, texts: list[str], max_length: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Token ids of each prompted input ([CLS] ... [SEP]) and the mask position of each."""
        specials_front = [tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else []
        specials_back = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else []
        literal = {}
        for p in self.parts():
            if p not in ("{text}", "{text_b}", "{mask}") and p not in literal:
                literal[p] = tokenizer(p.strip(), add_special_tokens=False)["input_ids"] if p.strip() else []
        fixed = len(specials_front) + len(specials_back) + 1 + sum(len(literal[p]) for p in self.parts() if p in literal)
        budget = max_length - fixed
        if budget < 1:
            raise ConfigError(f"template {self.source!r} leaves no room for the text at max_length {max_length}")
        body = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=budget)["input_ids"]
        seqs, mask_pos = [], np.zeros(len(body), np.int32)
        for i, ids in enumerate(body):
            out = list(specials_front)
            for p in self.parts():
                if p == "{text}":
                    out += ids
                elif p == "{text_b}":
                    continue
                elif p == "{mask}":
                    mask_pos[i] = len(out)
                    out.append(tokenizer.mask_token_id)
                else:
                    out += literal[p]
            out += specials_back
            seqs.append(np.asarray(out, np.int32))
        return seqs, mask_pos


@dataclasses.dataclass(frozen=True)
class Verbalizer:
    words: tuple[tuple[str, ...], ...]  # per class, one or more label words

    def token_table(self, tokenizer, *, single_token: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(ids C×W, weights C×W): every piece of every label word of a class, weights summing to 1."""
        rows = []
        for c, words in enumerate(self.words):
            pieces = []
            for w in words:
                ids = tokenizer(w, add_special_tokens=False)["input_ids"]
                if not ids or (len(ids) == 1 and ids[0] == tokenizer.unk_token_id):
                    raise ConfigError(f"label word {w!r} (class {c}) is not in the tokenizer's vocabulary")
                if single_token and len(ids) > 1:
                    raise ConfigError(f"label word {w!r} is split into {len(ids)} tokens "
                                      f"{tokenizer.convert_ids_to_tokens(ids)}; this mode needs single-token words")
                pieces += [(i, 1.0 / (len(ids) * len(words))) for i in ids]
            rows.append(pieces)
        W = max(len(r) for r in rows)
        ids = np.zeros((len(rows), W), np.int32)
        weights = np.zeros((len(rows), W), np.float32)
        for c, r in enumerate(rows):
            for j, (i, w) in enumerate(r):
                ids[c, j], weights[c, j] = i, w
        return ids, weights

    def description_table(self, tokenizer, template: Template, max_length: int = 32
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Similarity scoring: token ids and mask (N × L) of every class description
        (``template.describe(word)`` for each label word) and weights (C × N) that average a
        class's descriptions."""
        from autogpt_jax.data import batching

        sents, owner = [], []
        for c, words in enumerate(self.words):
            for w in words:
                sents.append(template.describe(w))
                owner.append(c)
        seqs = batching.encode(tokenizer, sents, max_length)
        ids, mask = batching.pad_batch(seqs, tokenizer.pad_token_id or 0)
        weights = np.zeros((len(self.words), len(sents)), np.float32)
        for n, c in enumerate(owner):
            weights[c, n] = 1.0 / len(self.words[c])
        return ids, mask, weights

    def to_json(self) -> list[list[str]]:
        return [list(w) for w in self.words]


# Rule-based library, filled from the label names.
RULE_TEMPLATES = {
    "sentiment": ("{text} It was {mask}.", "{text} All in all, it was {mask}.", "{text} A {mask} one.",
                  "{text} In summary, it was {mask}.", "{text} I thought it was {mask}.", "It was {mask}! {text}"),
    "topic": ("{text} This is about {mask}.", "[Topic: {mask}] {text}", "{text} The topic is {mask}."),
    "intent": ("{text} The customer wants {mask}.", "{text} This request is about {mask}.", "Request: {text} Intent: {mask}."),
    "nli": ("{text} ? {mask}, {text_b}",),
}

RULE_WORDS = {
    "positive": ("great",), "negative": ("terrible",), "neutral": ("okay",),
    "pos": ("great",), "neg": ("terrible",), "fresh": ("great",), "rotten": ("terrible",),
    "entailment": ("yes",), "contradiction": ("no",), "not_entailment": ("no",),
}


def rule_verbalizer(label_names: list[str]) -> Verbalizer:
    """Label words from the label names: a known sentiment/NLI word, else the name's own words
    (``card_arrival`` → "card arrival")."""
    return Verbalizer(tuple(RULE_WORDS.get(n.lower(), (n.replace("_", " ").lower(),)) for n in label_names))
