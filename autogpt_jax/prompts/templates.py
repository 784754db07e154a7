"""Prompt templates and verbalizers.

Template syntax: plain text with the placeholders ``{text}`` (the input), optionally ``{text_b}``,
and exactly one ``{mask}`` (where the model predicts the label word), e.g.
``"{text} All in all, it was {mask}."``. Only the input is truncated, so the mask always survives.

Decoders (GPT-2, Llama) read the template up to ``{mask}``: the label word is the next token, and
text after the mask is dropped. An optional ``{answer}`` splits the user's turn from the start of
the model's reply: with a chat model, the part before it goes through the tokenizer's chat template
(with the generation prompt) and the part after it begins the assistant's answer, e.g.
``"Is this review positive or negative?\nReview: {text}{answer}The sentiment is {mask}"``.
Without a chat template, ``{answer}`` is a newline.

Demonstrations (decoders): labelled examples, each filled into the template with its label word,
placed before the input as earlier turns of the conversation (LM-BFF's demonstrations, as
in-context examples). They are part of the prefix that every input shares, so a decoder runs them
once per batch, not once per input.

A verbalizer maps each class to one or more label words. Encoders: a word that the tokenizer splits
into several pieces contributes each piece with an equal share, and a class scores the weighted mean
of its pieces' logits at the mask. Decoders: a word is the continuation of the prompt, scored by its
next-token logit when every word is one token, else by its whole log-likelihood (the sum over its
tokens); a class scores the mean over its words.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from autogpt_jax.data import batching
from autogpt_jax.errors import ConfigError

_PLACEHOLDER = re.compile(r"\{(text|text_b|mask|answer)\}")


@dataclasses.dataclass(frozen=True)
class Template:
    source: str
    demos: tuple[tuple[str, str], ...] = ()  # (text, label word): decoders' in-context demonstrations

    def __post_init__(self):
        names = _PLACEHOLDER.findall(self.source)
        if names.count("mask") != 1:
            raise ConfigError(f"template {self.source!r} must contain exactly one {{mask}} (found {names.count('mask')}); "
                              "e.g. '{text} It was {mask}.'")
        if names.count("text") != 1:
            raise ConfigError(f"template {self.source!r} must contain {{text}} exactly once")
        stray = re.findall(r"\{[^}]*\}", _PLACEHOLDER.sub("", self.source))
        if stray:
            raise ConfigError(f"template {self.source!r} has unknown placeholder(s) {stray}; use {{text}}, {{text_b}}, "
                              "{mask}, {answer}")
        if names.count("answer") > 1 or ("answer" in names and names.index("answer") > names.index("mask")):
            raise ConfigError(f"template {self.source!r}: {{answer}} may appear once, before {{mask}}")

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
        return self.source.replace("{text}", text).replace("{mask}", word).replace("{text_b}", "").replace("{answer}", " ")

    def with_demos(self, demos: list[tuple[str, str]]) -> "Template":
        return dataclasses.replace(self, demos=tuple((str(t), str(w)) for t, w in demos))

    def describe(self, word: str) -> str:
        """The class description a sentence encoder compares inputs with (similarity scoring): the
        template without its inputs, the mask replaced by the label word ("{text} It was {mask}."
        with "great" → "It was great.")."""
        s = self.source.replace("{text_b}", "").replace("{text}", "").replace("{answer}", " ").replace("{mask}", word)
        return re.sub(r"\s+", " ", s).strip(" ?,:") or word

    @property
    def space_before_mask(self) -> bool:
        """Whether the label word follows a space (decoders then score the word with its space)."""
        return self.source.split("{mask}")[0].endswith(" ")

    def _causal_pieces(self, tokenizer) -> tuple[str, str]:
        """The literal text before and after ``{text}`` for a decoder: up to the mask, with the chat
        template applied around the user's turn when the template has ``{answer}``, and the
        demonstrations (as earlier turns) in front."""
        head = self.source.split("{mask}")[0].replace("{text_b}", "")
        if head.endswith(" "):
            head = head[:-1]  # the space belongs to the label word's first token
        sentinel = "\u2063TEXT\u2063"
        if "{answer}" in head:
            user, reply = head.split("{answer}")
            if getattr(tokenizer, "chat_template", None):
                turns = []
                for text, word in self.demos:
                    turns += [{"role": "user", "content": user.replace("{text}", text)},
                              {"role": "assistant", "content": self._reply(word)}]
                turns.append({"role": "user", "content": user.replace("{text}", sentinel)})
                chat = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
                head = chat.replace(sentinel, "{text}") + reply
            else:
                head = self._plain_demos() + user + "\n" + reply
        else:
            head = self._plain_demos() + head
        before, after = head.split("{text}")
        return before, after

    def _reply(self, word: str) -> str:
        """A demonstration's answer: the template after ``{answer}`` with the label word filled in."""
        return self.source.split("{answer}")[1].replace("{mask}", word).strip()

    def _plain_demos(self) -> str:
        """Demonstrations without a chat template: each filled template, a blank line after each."""
        filled = (self.source.replace("{answer}", "\n").replace("{text_b}", "").replace("{mask}", word).replace("{text}", text)
                  for text, word in self.demos)
        return "".join(f + "\n\n" for f in filled)

    def _causal_split(self, tokenizer) -> tuple[list[int], str, list[int]]:
        before, after = self._causal_pieces(tokenizer)
        # A space before the text belongs to the text's first token (byte-level BPE: "Review: A" is
        # "Review", ":", " A"), so the pieces tokenise as the whole string would.
        lead = before[len(before.rstrip(" ")):]
        before = before.rstrip(" ")
        front = tokenizer("", add_special_tokens=True)["input_ids"]  # what the tokenizer adds itself (BOS)
        tok = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
        return list(front) + tok(before), lead, tok(after)

    def causal_prefix(self, tokenizer) -> np.ndarray:
        """Token ids every prompted input starts with (decoders), computed once and shared. The
        last shared token stays with each input, so no input is left empty."""
        return np.asarray(self._causal_split(tokenizer)[0][:-1], np.int32)

    def _encode_causal(self, tokenizer, texts: list[str], max_length: int) -> tuple[list[np.ndarray], np.ndarray]:
        head, lead, tail = self._causal_split(tokenizer)
        # max_length bounds each input's own tokens: the text, what follows it, and the last shared
        # token. The shared prefix (chat preamble, instructions, a label list, demonstrations) runs
        # once per batch (``causal_prefix``) and does not count.
        budget = max_length - 1 - len(tail)
        if budget < 1:
            raise ConfigError(f"template {self.source!r} leaves no room for the text at max_length {max_length}")
        body = tokenizer([lead + t for t in texts], add_special_tokens=False, truncation=True,
                         max_length=budget)["input_ids"]
        seqs = [np.asarray(head + ids + tail, np.int32) for ids in body]
        return seqs, np.asarray([len(s_) - 1 for s_ in seqs], np.int32)

    def encode(self, tokenizer, texts: list[str], max_length: int, *, causal: bool = False
               ) -> tuple[list[np.ndarray], np.ndarray]:
        """Token ids of each prompted input and the position whose prediction is the label word:
        the mask ([CLS] ... [MASK] ... [SEP]) for encoders, the last prompt token for decoders."""
        if causal:
            return self._encode_causal(tokenizer, texts, max_length)
        specials_front = [tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else []
        specials_back = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else []
        literal = {}
        for p in self.parts():
            if p not in ("{text}", "{text_b}", "{mask}", "{answer}") and p not in literal:
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
                elif p in ("{text_b}", "{answer}"):
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

    def _word_ids(self, tokenizer, c: int, w: str, leading_space: bool = False) -> list[int]:
        ids = tokenizer((" " + w) if leading_space else w, add_special_tokens=False)["input_ids"]
        if not ids or (len(ids) == 1 and ids[0] == tokenizer.unk_token_id):
            raise ConfigError(f"label word {w!r} (class {c}) is not in the tokenizer's vocabulary")
        return list(ids)

    def token_table(self, tokenizer, *, single_token: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Encoders: (ids C×W, weights C×W), every piece of every label word of a class at the mask,
        weights summing to 1."""
        rows = []
        for c, words in enumerate(self.words):
            pieces = []
            for w in words:
                ids = self._word_ids(tokenizer, c, w)
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

    def sequence_table(self, tokenizer, *, leading_space: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Decoders: (ids C×W×T, weights C×W), each label word's tokens as the continuation of the
        prompt (``leading_space``: as they follow a space, " great"), padded with -1; a class scores
        the mean of its words' log-likelihoods. Two classes may not share a word."""
        seqs = [[tuple(self._word_ids(tokenizer, c, w, leading_space)) for w in words] for c, words in enumerate(self.words)]
        owner: dict[tuple[int, ...], tuple[int, str]] = {}
        for c, (words, ws) in enumerate(zip(self.words, seqs)):
            for w, t in zip(words, ws):
                if t in owner and owner[t][0] != c:
                    raise ConfigError(f"label words {owner[t][1]!r} and {w!r} of different classes are the same tokens "
                                      f"{tokenizer.convert_ids_to_tokens(list(t))}")
                owner[t] = (c, w)
        W, T = max(len(ws) for ws in seqs), max(len(t) for ws in seqs for t in ws)
        ids = np.full((len(seqs), W, T), -1, np.int32)
        weights = np.zeros((len(seqs), W), np.float32)
        for c, ws in enumerate(seqs):
            for j, t in enumerate(ws):
                ids[c, j, :len(t)], weights[c, j] = t, 1.0 / len(ws)
        return ids, weights

    def description_table(self, tokenizer, template: Template, max_length: int = 32
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Similarity scoring: token ids and mask (N × L) of every class description
        (``template.describe(word)`` for each label word) and weights (C × N) that average a
        class's descriptions."""
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


# The rule library. Every task gets the generic candidates, built from its label names ({labels}:
# "A, B or C") and, when given, its description ({description}); a task type adds its own templates
# before them. None names a domain.
GENERIC_TEMPLATES = ("{text} Category: {mask}.", "{text} This is about {mask}.", "Category: {mask}. {text}")
DESCRIBED_TEMPLATES = ("{description}. {text} Category: {mask}.",)
RULE_TEMPLATES = {
    "sentiment": ("{text} It was {mask}.", "{text} All in all, it was {mask}.", "{text} A {mask} one.",
                  "{text} In summary, it was {mask}.", "{text} I thought it was {mask}.", "It was {mask}! {text}"),
    "topic": ("{text} This is about {mask}.", "[Topic: {mask}] {text}", "{text} The topic is {mask}."),
    "intent": ("{text} The customer wants {mask}.", "{text} This request is about {mask}.", "Request: {text} Intent: {mask}."),
    "nli": ("{text} ? {mask}, {text_b}",),
}

# For chat decoders (the model answers a question about the input): the user asks, the reply
# starts, and the class name itself is the next word.
GENERIC_CHAT = ("Which of these fits the text: {labels}?\nText: {text}{answer}Answer: {mask}",
                "Text: {text}\nWhich category is this text: {labels}?{answer}Category: {mask}")
DESCRIBED_CHAT = ("{description}.\nCategories: {labels}.\nText: {text}\nWhich category fits?{answer}Category: {mask}",)
CHAT_TEMPLATES = {
    "sentiment": ("Is the sentiment of this text {labels}?\nText: {text}{answer}The sentiment is {mask}",
                  "Text: {text}\nIs this text {labels}?{answer}This text is {mask}",
                  "What is the sentiment of the following text?\n{text}{answer}The sentiment of this text is {mask}"),
    "topic": ("What is the topic of this text ({labels})?\n{text}{answer}The topic is {mask}",),
    "intent": ("A customer wrote: {text}\nWhat does the customer want ({labels})?{answer}The customer wants {mask}",),
}
# Decoders without a chat template: a plain continuation.
GENERIC_PLAIN = ("Text: {text}\nCategory: {mask}", "{text}\nThis is about {mask}")
DESCRIBED_PLAIN = ("{description} ({labels}).\nText: {text}\nCategory: {mask}",)

RULE_WORDS = {
    "positive": ("great",), "negative": ("terrible",), "neutral": ("okay",),
    "pos": ("great",), "neg": ("terrible",), "fresh": ("great",), "rotten": ("terrible",),
    "entailment": ("yes",), "contradiction": ("no",), "not_entailment": ("no",),
}


def humanize(name: str) -> str:
    """A label name as words: ``card_arrival`` → "card arrival", ``Billing-Issue`` → "billing issue"."""
    words = re.sub(r"[_\-]+", " ", str(name)).strip()
    return re.sub(r"\s+", " ", words).lower() or str(name)


def rule_verbalizer(label_names: list[str], *, literal: bool = False) -> Verbalizer:
    """Label words from the label names: a known sentiment/NLI word, else the name's own words
    (``card_arrival`` → "card arrival"). ``literal`` (decoders): always the name's own words,
    with fresh/rotten read as positive/negative."""
    if literal:
        alias = {"fresh": "positive", "rotten": "negative", "pos": "positive", "neg": "negative"}
        return Verbalizer(tuple((alias.get(n.lower(), humanize(n)),) for n in label_names))
    return Verbalizer(tuple(RULE_WORDS.get(n.lower(), (humanize(n),)) for n in label_names))


def label_list(words: list[str]) -> str:
    """``["a", "b", "c"]`` → "a, b or c"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def fill_task(source: str, verb: Verbalizer, description: str | None) -> str:
    """A template with the task's placeholders filled: {labels} (each class's first label word,
    listed) and {description}."""
    if "{description}" in source:
        if not description:
            raise ConfigError(f"template {source!r} uses {{description}}; pass --task.description")
        source = source.replace("{description}", description.strip().rstrip("."))
    return source.replace("{labels}", label_list([w[0] for w in verb.words]))


def rule_prompts(task_type: str | None, label_names: list[str], *, decoder: bool, chat: bool,
                 description: str | None = None) -> tuple[list[str], Verbalizer]:
    """Candidate templates (filled) and rule label words for any label set: the task type's
    templates (when set), the description's, then the generic ones."""
    if decoder:
        verb = rule_verbalizer(label_names, literal=True)
        typed = CHAT_TEMPLATES.get(task_type, ()) if chat else ()
        described = DESCRIBED_CHAT if chat else DESCRIBED_PLAIN
        generic = GENERIC_CHAT if chat else GENERIC_PLAIN
    else:
        verb = rule_verbalizer(label_names)
        typed, described, generic = RULE_TEMPLATES.get(task_type, ()), DESCRIBED_TEMPLATES, GENERIC_TEMPLATES
    templates = list(typed) + (list(described) if description else []) + list(generic)
    return list(dict.fromkeys(fill_task(t, verb, description) for t in templates)), verb
