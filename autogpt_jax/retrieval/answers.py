"""The answer set: the Bitext responses of the training questions, grouped by intent (at most
``answers_per_intent`` per intent), with their ``{{placeholders}}`` filled from the company
details in the config; and the question → answer pairs of the configured dataset.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from autogpt_jax.data import sources
from autogpt_jax.errors import RetrievalError

# Filled into the Bitext responses' {{placeholders}} (case-insensitive); retrieval.company overrides
# and extends it. Placeholders not listed: "...Anonymized" ones read "your <name>", bare numbers
# "your order", and the rest (the names of pages and buttons, "{{Order Details}}") their own name.
DEFAULT_COMPANY: dict[str, str] = {
    "Company Name": "Acme Shop",
    "Website Name": "acmeshop.example",
    "Website": "acmeshop.example",
    "Website URL": "https://acmeshop.example",
    "Company Website": "https://acmeshop.example",
    "Customer Support Phone Number": "+1 555 0100",
    "Customer Service Phone Number": "+1 555 0100",
    "Support Phone Number": "+1 555 0100",
    "Phone Number": "+1 555 0100",
    "Customer Support Email": "support@acmeshop.example",
    "Customer Support Email Address": "support@acmeshop.example",
    "Customer Service Email": "support@acmeshop.example",
    "Customer Service Email Address": "support@acmeshop.example",
    "Support Email": "support@acmeshop.example",
    "Support Email Address": "support@acmeshop.example",
    "Email": "support@acmeshop.example",
    "Live Chat": "live chat",
    "Customer Support Availability": "Monday to Friday, 8 am to 8 pm",
    "Customer Support Hours": "Monday to Friday, 8 am to 8 pm",
    "Customer Service Hours": "Monday to Friday, 8 am to 8 pm",
    "Operating Hours": "Monday to Friday, 8 am to 8 pm",
}

_PLACEHOLDER = re.compile(r"\{\{([^{}]*)\}\}")
# a response about one customer's particulars: an anonymised detail or a long number
_SPECIFIC = re.compile(r"\{\{[^{}]*(?:Anonymized|\d{6,})[^{}]*\}\}|\d{6,}", re.IGNORECASE)


def fill_placeholders(text: str, company: dict[str, str] | None = None) -> str:
    """Replace ``{{Name}}`` placeholders with company details (see ``DEFAULT_COMPANY``)."""
    table = {k.lower(): v for k, v in {**DEFAULT_COMPANY, **(company or {})}.items()}

    def sub(m: re.Match) -> str:
        name = m.group(1).strip()
        if name.lower() in table:
            return table[name.lower()]
        if name.lower().endswith("anonymized"):
            return "your " + name[: -len("anonymized")].strip().lower()
        if re.fullmatch(r"[0-9A-Fa-f]{8,}", name):
            return "your order"
        return name

    return _PLACEHOLDER.sub(sub, text)


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    intent: str


def build_answers(questions_ds, per_intent: int, company: dict[str, str] | None, seed: int = 0) -> list[Answer]:
    """The answer set: up to ``per_intent`` distinct filled-in responses of each intent's training
    questions (a seeded choice), intents in sorted order. Responses that repeat their question's
    own details (an order number, a name: Bitext's ``entity_value``) come last, so a general
    answer is not served with someone else's order number."""
    intents = list(questions_ds["intent"])
    responses = list(questions_ds["answer"])
    cols = questions_ds.column_names if hasattr(questions_ds, "column_names") else list(questions_ds)
    entities = list(questions_ds["entity_value"]) if "entity_value" in cols else [""] * len(intents)
    out: list[Answer] = []
    for intent in sorted(set(intents)):
        idx = [i for i, x in enumerate(intents) if x == intent]
        idx = [idx[j] for j in np.random.default_rng([seed, len(out)]).permutation(len(idx))]
        idx.sort(key=lambda i: (bool(entities[i]) and entities[i] in responses[i],  # stable: general ones first
                                _SPECIFIC.search(responses[i]) is not None))
        seen: set[str] = set()
        for i in idx:
            t = fill_placeholders(responses[i], company).strip()
            if t and t not in seen:
                seen.add(t)
                out.append(Answer(t, intent))
            if len(seen) >= per_intent:
                break
    return out



def pair_data(dataset_name: str) -> tuple[Any, Any]:
    """(train, held-out) question sets of the dataset ``dataset_name`` (columns question, answer, intent)."""
    ds = sources.load_dataset(dataset_name)
    for split in ("train", "test"):
        if split not in ds or not {"question", "answer", "intent"} <= set(ds[split].column_names):
            raise RetrievalError(f"retrieval.dataset {dataset_name!r} needs train and test splits with "
                                 "question, answer and intent columns (bitext_support has them)")
    return ds["train"], ds["test"]
