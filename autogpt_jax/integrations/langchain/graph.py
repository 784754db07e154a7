"""``build_support_graph``: the customer-service assistant as a LangGraph graph.

    classify ──(confident and not unhappy)──► retrieve ──► answer ──► END
        └──────(hand-over or unhappy)────────► escalate (interrupt: a human replies) ──► END

Routing is decided by our calibrated classifiers, not by a language model choosing tools: the
intent model's temperature-scaled confidence against the hand-over threshold fitted on dev and
out-of-scope queries (``autogpt_jax.handover``), and the sentiment model's probability of
``negative`` against ``unhappy_at``, the demo's rule. ``escalate`` raises a LangGraph
``interrupt`` carrying what the human needs (the question, the intent, the reason, a suggested
answer); resume the thread with ``Command(resume="the human's reply")``. With a ``chat_model``
the answer is phrased by it, grounded on the retrieved answer; without one the graph answers with
the retrieved answer itself, as the demo's ``/support`` endpoint does.
"""

from __future__ import annotations

from typing import Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from autogpt_jax.assistant import UNHAPPY_AT
from autogpt_jax.errors import IntegrationError
from autogpt_jax.integrations.langchain import loaders
from autogpt_jax.integrations.langchain.tools import sentiment_record

GROUNDING = ("You are a customer-service assistant. Answer the customer's message using only the facts in the "
             "reference answer below; do not add facts.\n\nReference answer:\n{answer}")


class SupportState(TypedDict, total=False):
    question: str  # the input
    intent: str | None
    confidence: float  # calibrated
    probabilities: dict[str, float]
    handover: bool  # below the hand-over threshold, or nothing to answer
    reason: str | None
    sentiment: dict | None  # label, probabilities, unhappy (with a sentiment model)
    unhappy: bool
    answers: list[dict]  # retrieved: answer, intent, score, id
    answer: str | None  # the reply: the top answer, the chat model's phrasing of it, or the human's
    escalated: bool
    human_reply: str | None


def build_support_graph(support_export: str, *, sentiment_export: str | None = None,
                        chat_model: BaseChatModel | None = None, checkpointer: Any = None, top_k: int | None = None,
                        unhappy_at: float = UNHAPPY_AT):
    """The compiled graph over a customer-service export (``runs/support_qa/export``) and,
    optionally, a sentiment export (``runs/sentiment_mr_best/export``) and a chat model.
    ``checkpointer`` keeps interrupted threads (default: in memory). Invoke it with
    ``{"question": ...}`` and a ``thread_id``; an escalated run stops with ``__interrupt__`` in
    its output until it is resumed with ``Command(resume=reply)``."""
    loaders.support_export(support_export)  # clear errors before anything loads
    if sentiment_export is not None:
        loaders.sentiment_export(sentiment_export)
    if top_k is not None and top_k < 1:
        raise IntegrationError(f"top_k must be >= 1 (answers to retrieve), got {top_k}")

    def classify(state: SupportState) -> dict:
        if not isinstance(state.get("question"), str):
            raise IntegrationError("the support graph's input is {'question': '<the customer's message>'}; "
                                   f"got {sorted(state)}")
        rec = loaders.assistant(support_export).classify([state["question"]])[0]
        mood = sentiment_record(sentiment_export, state["question"], unhappy_at) if sentiment_export else None
        return {"intent": rec["intent"], "confidence": rec["confidence"], "probabilities": rec["probabilities"],
                "handover": rec["handover"], "reason": rec["reason"], "sentiment": mood,
                "unhappy": bool(mood and mood["unhappy"]), "escalated": False}

    def route(state: SupportState) -> str:
        return "escalate" if state["handover"] or state["unhappy"] else "retrieve"

    def retrieve(state: SupportState) -> dict:
        a = loaders.assistant(support_export)
        return {"answers": a.retriever.search([state["question"]], top_k or a.top_k)[0]}

    def answer(state: SupportState) -> dict:
        top = state["answers"][0]["answer"] if state["answers"] else None
        if chat_model is None or top is None:
            return {"answer": top}
        reply = chat_model.invoke([SystemMessage(GROUNDING.format(answer=top)), HumanMessage(state["question"])])
        return {"answer": reply.text or top}

    def escalate(state: SupportState) -> dict:
        hits = [] if state["intent"] is None else retrieve(state)["answers"]
        why = "; ".join(([state["reason"]] if state["handover"] else []) + (
            [f"the customer sounds unhappy (negative {state['sentiment']['probabilities']['negative']:.0%})"]
            if state["unhappy"] else []))
        reply = interrupt({"question": state["question"], "intent": state["intent"],
                           "confidence": state["confidence"], "reason": why, "unhappy": state["unhappy"],
                           "suggested_answer": hits[0]["answer"] if hits else None})
        return {"answers": hits, "answer": str(reply), "human_reply": str(reply), "escalated": True, "reason": why}

    g = StateGraph(SupportState)
    g.add_node("classify", classify)
    g.add_node("retrieve", retrieve)
    g.add_node("answer", answer)
    g.add_node("escalate", escalate)
    g.add_edge(START, "classify")
    g.add_conditional_edges("classify", route, {"retrieve": "retrieve", "escalate": "escalate"})
    g.add_edge("retrieve", "answer")
    g.add_edge("answer", END)
    g.add_edge("escalate", END)
    return g.compile(checkpointer=checkpointer if checkpointer is not None else InMemorySaver())
