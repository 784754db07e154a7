"""Prompt search: label words (by the model's own mask/next-token probabilities, or near the
rule words for similarity scoring), template ranking, in-context demonstrations."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from autogpt_jax.config import PromptConfig
from autogpt_jax.errors import ConfigError
from autogpt_jax.evaluation import evaluate
from autogpt_jax.inference import Classifier, make_classifier
from autogpt_jax.models.build import is_decoder
from autogpt_jax.models.generation import generate_text
from autogpt_jax.prompts.templates import Template, Verbalizer


def _words(v) -> tuple[str, ...]:
    items = v if isinstance(v, (list, tuple)) else str(v).split(",")
    return tuple(str(w).strip() for w in items if str(w).strip())


def parse_label_words(spec: str | None, names: list[str]) -> Verbalizer | None:
    """``prompt.label_words``, each class by its name: ``"billing=invoice,bill|refund=money back"``
    (classes separated by ``|``, alternatives by ``,``), or a JSON/YAML file mapping each class to
    its words. Every class of the task must be named once; an unknown name is an error. ``names``:
    the class names themselves (the rule label words; None is returned, as for no setting)."""
    if not spec or spec.strip() == "names":
        return None
    path = Path(spec)
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"prompt.label_words {spec!r}: no such file")
        try:
            mapping = yaml.safe_load(path.read_text())  # JSON is YAML
        except yaml.YAMLError as e:
            raise ConfigError(f"prompt.label_words {spec}: not valid JSON/YAML ({e})") from None
        if not isinstance(mapping, dict):
            raise ConfigError(f"prompt.label_words {spec}: the file must map each class name to its label words")
        given = [(str(k), _words(v)) for k, v in mapping.items()]
    else:
        given = []
        for part in spec.split("|"):
            if "=" not in part:
                example = "|".join(f"{n}=word" for n in names[:3]) + ("|..." if len(names) > 3 else "")
                raise ConfigError(f"prompt.label_words {spec!r}: name the class of each set of words, e.g. "
                                  f"{example!r} (the task's classes: {', '.join(names)})")
            name, words = part.split("=", 1)
            given.append((name.strip(), _words(words)))
    index = {n: i for i, n in enumerate(names)}
    unknown = [n for n, _ in given if n not in index]
    if unknown:
        raise ConfigError(f"prompt.label_words names class(es) {unknown} that the task does not have; its classes: "
                          f"{', '.join(names)}")
    seen = [n for n, _ in given]
    twice = sorted({n for n in seen if seen.count(n) > 1})
    missing = [n for n in names if n not in seen]
    empty = [n for n, w in given if not w]
    if twice or missing or empty:
        what = (f"class(es) {missing} have no label words" if missing else
                f"class(es) {twice} are named twice" if twice else f"class(es) {empty} have an empty word list")
        raise ConfigError(f"prompt.label_words {spec!r}: {what}; give every class of {', '.join(names)} its words once")
    words = dict(given)
    return Verbalizer(tuple(words[n] for n in names))


def search_label_words(model, tok, train, n_classes: int, template: Template, pc: PromptConfig
                       ) -> tuple[Verbalizer, list[dict]]:
    """Top-k vocabulary words per class by mean mask-position probability on that class's training
    examples; combinations scored by zero-shot accuracy on train (per-class greedy when there are
    too many combinations)."""
    k = pc.top_k_words
    vocab = tok.get_vocab()
    if is_decoder(model):  # next-token candidates: whole words, spaced as the template puts them (" great")
        space = template.space_before_mask

        def as_word(t: str) -> str | None:
            w = tok.convert_tokens_to_string([t])
            return w.strip() if w.startswith(" ") == space and w.strip().isalpha() and len(w.strip()) > 2 else None
    else:
        def as_word(t: str) -> str | None:
            return t if t.isalpha() and len(t) > 2 and not t.startswith("##") else None
    word_of = {i: w for t, i in vocab.items() if (w := as_word(t)) is not None}
    ok_ids = np.asarray(sorted(word_of))
    ids_VxW = ok_ids[:, None]
    clf = Classifier(model, tok, [str(i) for i in ok_ids], "prompt", template, ids_VxW,
                     np.ones_like(ids_VxW, np.float32), max_length=pc.max_length)
    texts, labels = list(train["text"]), np.asarray(train["label"])
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(clf.logits(texts)), axis=-1))  # N × V'
    C = n_classes
    mean_c = np.stack([np.exp(logp[labels == c]).mean(0) for c in range(C)])
    # Favour words that are likely for this class *and* unlikely for the others.
    score = np.log(mean_c + 1e-12) - np.log(mean_c.mean(0, keepdims=True) + 1e-12) + np.log(mean_c + 1e-12)
    top = [np.argsort(-score[c])[:k] for c in range(C)]
    combos = np.prod([len(t) for t in top])
    cands = []
    if combos <= 4096:
        for combo in itertools.product(*top):
            if len(set(combo)) < C:
                continue
            acc = float((logp[:, list(combo)].argmax(-1) == labels).mean())
            cands.append((acc, combo))
    if not cands:  # greedy, the most confident classes first: a word taken by one class goes to no other
        order = np.argsort([-score[c, top[c][0]] for c in range(C)])
        pick, taken = [0] * C, set()
        for c in order:
            j = next(int(j) for j in np.argsort(-score[c]) if int(j) not in taken)
            pick[c] = j
            taken.add(j)
        combo = tuple(pick)
        cands.append((float((logp[:, list(combo)].argmax(-1) == labels).mean()), combo))
    cands.sort(key=lambda x: -x[0])
    words = lambda combo: [word_of[int(ok_ids[j])] for j in combo]  # noqa: E731
    best = cands[0][1]
    return Verbalizer(tuple((w,) for w in words(best))), [{"label_words": words(c), "train_zero_shot_accuracy": a}
                                                             for a, c in cands[:5]]


def search_label_words_similarity(model, tok, train, names: list[str], template: Template, base: Verbalizer,
                                  pc: PromptConfig, *, pooling: str, batch_size: int, picks: int = 2
                                  ) -> tuple[Verbalizer, list[dict]]:
    """Label-word search for similarity scoring. Unconstrained, 32 examples pick words that fit
    them by accident ("ryder" vs "greeting"); so the candidates of a class are the 2·top_k
    vocabulary words nearest its rule word in the model's token-embedding space, ranked by how
    much closer the class's training examples are to the word's description ("It was awful.")
    than the other classes' examples are. The best ``picks`` join the rule words, and the larger
    verbalizer is kept only if its zero-shot accuracy on train is at least the rule words'."""
    n_near = 2 * pc.top_k_words
    vocab = tok.get_vocab()
    ok_ids = np.asarray(sorted(i for t, i in vocab.items() if t.isalpha() and len(t) > 2 and not t.startswith("##")))
    word = np.asarray(jax.device_get(model.word_embeddings()), np.float32)  # fetched once, V × D
    E = word[ok_ids]
    E /= np.maximum(np.linalg.norm(E, axis=-1, keepdims=True), 1e-9)
    taken = {w for ws in base.words for w in ws}
    near: list[list[str]] = []
    for words in base.words:
        pieces = [i for w in words for i in tok(w, add_special_tokens=False)["input_ids"]]
        anchor = word[pieces].mean(0)
        order = np.argsort(-(E @ (anchor / max(np.linalg.norm(anchor), 1e-9))))
        near.append([w for w in tok.convert_ids_to_tokens(ok_ids[order[: n_near + len(taken)]].tolist())
                     if w not in taken][:n_near])
    flat = [w for ws in near for w in ws]

    def similarity(v: Verbalizer, labels: list[str]) -> Classifier:
        return make_classifier("similarity", model, tok, labels, template, v, max_length=pc.max_length,
                               pooling=pooling, scale=pc.similarity_scale)

    probe = similarity(Verbalizer(tuple((w,) for w in flat)), flat)
    texts, labels = list(train["text"]), np.asarray(train["label"])
    sims = probe.logits(texts) / pc.similarity_scale  # N × (all candidate words)
    C = len(base.words)
    mean_c = np.stack([sims[labels == c].mean(0) for c in range(C)])
    margin = mean_c - mean_c.mean(0, keepdims=True)
    words, cands, start = [], [], 0
    for c in range(C):
        idx = np.arange(start, start + len(near[c]))
        start += len(near[c])
        ranked = idx[np.argsort(-margin[c, idx])]
        words.append(base.words[c] + tuple(flat[j] for j in ranked[:picks]))
        cands.append({"class": names[c], "candidates": [{"word": flat[j], "margin": float(margin[c, j])}
                                                         for j in ranked[: pc.top_k_words]]})
    grown = Verbalizer(tuple(words))
    acc_base, acc_grown = (evaluate(similarity(v, names), train, batch_size)["accuracy"] for v in (base, grown))
    chosen = grown if acc_grown >= acc_base else base
    return chosen, [{"label_words": grown.to_json(), "train_zero_shot_accuracy": acc_grown},
                    {"label_words": base.to_json(), "train_zero_shot_accuracy": acc_base}, *cands]


def rank_templates(candidates: list[str], dev_score: Callable[[Template], dict]) -> list[dict]:
    """Candidate templates, best first, by ``dev_score`` (``dev_accuracy`` and ``dev_log_loss`` of a
    short fine-tuning, or zero-shot): accuracy, ties to the lower log-loss, then the earlier candidate."""
    scored = [{"template": t, **dev_score(Template(t))} for t in candidates]
    order = sorted(range(len(scored)), key=lambda i: (-scored[i]["dev_accuracy"],
                                                      scored[i].get("dev_log_loss") or 0.0, i))
    return [scored[i] for i in order]


PARAPHRASE_REQUEST = ("Rewrite the following question in different words, keeping its meaning. "
                      "Reply with the rewritten question only.\nQuestion: {line}")


def instruction_line(source: str) -> str | None:
    """The instruction of a chat template: the longest line of the user's turn without an input."""
    user = source.split("{answer}")[0] if "{answer}" in source else source.split("{mask}")[0]
    lines = [ln for ln in user.split("\n") if "{" not in ln and len(ln.strip()) >= 10]
    return max(lines, key=len) if lines else None


def usable_paraphrase(text: str, original: str) -> str | None:
    """The first line of a generated paraphrase, when it can stand in a template: 10-200 characters,
    no braces, not the original, ending as the original ends ("?")."""
    line = text.strip().split("\n")[0].strip().strip('"').strip()
    for prefix in ("Question:", "Rewritten question:", "Rewritten:"):
        if line.lower().startswith(prefix.lower()):
            line = line[len(prefix):].strip()
    if not 10 <= len(line) <= 200 or "{" in line or "}" in line or line.lower() == original.lower():
        return None
    if original.endswith("?") and not line.endswith("?"):
        return None
    return line


def paraphrase_templates(model, tok, templates: list[str], per_template: int, seed: int, *,
                         tries: int = 4) -> list[str]:
    """The model-based prompt generator (decoders): ``per_template`` paraphrases of each chat
    template's instruction, written by the model itself (sampled at temperature 0.8, a few tries
    each), each put in place of the instruction. Templates without an instruction line give none."""
    if not is_decoder(model):
        raise ConfigError("prompt.paraphrases needs a decoder (it writes the paraphrases); set prompt.paraphrases 0")
    out: list[str] = []
    for source in templates:
        line = instruction_line(source)
        if line is None:
            continue
        found = generate_usable(model, tok, PARAPHRASE_REQUEST.format(line=line), per_template,
                                lambda r: usable_paraphrase(r, line), seed=seed, seed_step=101, tries=tries,
                                max_new_tokens=48)
        out += [source.replace(line, p_, 1) for p_ in found]
    return [t for t in dict.fromkeys(out) if t not in templates]


def generate_usable(model, tok, request: str, n: int, usable: Callable[[str], str | None], *, seed: int,
                    seed_step: int, tries: int, max_new_tokens: int) -> list[str]:
    """Up to ``n`` distinct usable lines the model writes for ``request`` (``n`` replies sampled at
    temperature 0.8 per try, each kept when ``usable`` returns a line, at most ``tries`` tries)."""
    found: list[str] = []
    for t in range(tries):
        for reply in generate_text(model, tok, [request] * n, max_new_tokens=max_new_tokens, temperature=0.8,
                                   top_p=0.95, seed=seed + seed_step * t):
            line = usable(reply)
            if line is not None and line not in found and len(found) < n:
                found.append(line)
        if len(found) >= n:
            break
    return found


INSTRUCTION_REQUEST = ("Here are some texts, each with its category.\n\n{examples}\n\nWrite one short instruction "
                       "that tells a reader how to choose the category of a text like these. Reply with the "
                       "instruction only.")
WRITTEN_TEMPLATE = "{instruction}\nCategories: {labels}.\nText: {text}{answer}Category: {mask}"


def usable_instruction(text: str) -> str | None:
    """The first line of a written instruction, when it can stand in a template: 15-200 characters,
    no braces, no echoed example."""
    line = text.strip().split("\n")[0].strip().strip('"').strip()
    for prefix in ("Instruction:", "Instructions:"):
        if line.lower().startswith(prefix.lower()):
            line = line[len(prefix):].strip()
    if not 15 <= len(line) <= 200 or "{" in line or "}" in line or line.lower().startswith(("text:", "category:")):
        return None
    return line


def written_templates(model, tok, train, names: list[str], n: int, seed: int, *, per_class: int = 2,
                      tries: int = 3) -> list[str]:
    """The model-based prompt generator (decoders): the model reads ``per_class`` labelled rows of
    each class (a seeded draw, at most 24 rows) and writes ``n`` instructions for the task (sampled
    at temperature 0.8, a few tries); each becomes a chat template listing the classes."""
    if not is_decoder(model):
        raise ConfigError("prompt.written needs a decoder (it writes the instructions); set prompt.written 0")
    labels = np.asarray(train["label"])
    texts = list(train["text"])
    order = np.random.default_rng(seed + 4217).permutation(len(labels))
    picked = [i for c in range(len(names)) for i in [j for j in order if labels[j] == c][:per_class]][:24]
    examples = "\n\n".join(f"Text: {' '.join(texts[i].split()[:40])}\nCategory: {names[labels[i]]}" for i in picked)
    request = INSTRUCTION_REQUEST.format(examples=examples)
    found = generate_usable(model, tok, request, n, usable_instruction, seed=seed, seed_step=131, tries=tries,
                            max_new_tokens=40)
    return [WRITTEN_TEMPLATE.replace("{instruction}", line) for line in found]


def pick_demonstrations(train, verb: Verbalizer, per_class: int, seed: int, model) -> list[tuple[str, str]]:
    """``per_class`` training examples of each class (a seeded draw), each with its class's first
    label word, interleaved class by class; decoders only."""
    if not is_decoder(model):
        raise ConfigError("prompt.demonstrations needs a decoder (GPT-2 or Llama family): an encoder has no "
                          "shared prefix to put them in; set prompt.demonstrations to 0")
    labels = np.asarray(train["label"])
    order = np.random.default_rng(seed + 7919).permutation(len(labels))
    picked = [[i for i in order if labels[i] == c][:per_class] for c in range(len(verb.words))]
    if any(len(p) < per_class for p in picked):
        raise ConfigError(f"prompt.demonstrations {per_class} per class: the training split has fewer examples "
                          "of some class")
    texts = list(train["text"])
    return [(texts[p[j]], verb.words[c][0]) for j in range(per_class) for c, p in enumerate(picked)]
