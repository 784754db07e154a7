"""Our classifiers and the answer index as LangChain tools (``StructuredTool``, pydantic argument
schemas). Each returns a short text for a model to read and the full record as the artifact
(``response_format="content_and_artifact"``: a ``ToolMessage``'s ``artifact``)."""

from __future__ import annotations

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

from autogpt_jax.assistant import UNHAPPY_AT, unhappy
from autogpt_jax.inference import predict_records
from autogpt_jax.integrations.langchain import loaders


class TextInput(BaseModel):
    text: str = Field(description="the text to classify, for example a customer's message")


class MessageInput(BaseModel):
    message: str = Field(description="the customer's message")


class QuestionInput(BaseModel):
    question: str = Field(description="the customer's question")
    k: int = Field(default=3, ge=1, le=20, description="how many answers to return")


def sentiment_record(export: str, text: str, unhappy_at: float = UNHAPPY_AT) -> dict:
    """``label`` and ``probabilities`` of ``text``, and ``unhappy``: negative at least ``unhappy_at``."""
    rec = predict_records(loaders.sentiment(export), [str(text)], 1)[0]
    return {**rec, "unhappy": unhappy(rec["probabilities"], unhappy_at)}


def sentiment_tool(export: str, *, unhappy_at: float = UNHAPPY_AT) -> StructuredTool:
    """The sentiment of a text, from a sentiment export (its distilled student when the export is
    a prompt ensemble or a decoder, as the demo serves it)."""
    loaders.sentiment_export(export)  # a clear error now for a directory that is not one

    def run(text: str) -> tuple[str, dict]:
        r = sentiment_record(export, text, unhappy_at)
        return f"{r['label']} ({r['probabilities'][r['label']]:.0%})" + (" - the customer is unhappy" if r["unhappy"]
                                                                         else ""), r
    return StructuredTool.from_function(
        run, name="sentiment", args_schema=TextInput, response_format="content_and_artifact",
        description="The sentiment of a text (negative or positive) with its probability; flags an unhappy customer.")


def intent_tool(export: str) -> StructuredTool:
    """A customer message's intent with its calibrated confidence and the hand-over decision, from
    a customer-service export."""
    loaders.support_export(export)

    def run(message: str) -> tuple[str, dict]:
        r = loaders.assistant(export).classify([message])[0]
        if r["intent"] is None:
            return f"hand over to a human: {r['reason']}", r
        text = f"intent {r['intent']} (calibrated confidence {r['confidence']:.0%})"
        return text + (f"; hand over to a human: {r['reason']}" if r["handover"] else "; answer it"), r
    return StructuredTool.from_function(
        run, name="customer_intent", args_schema=MessageInput, response_format="content_and_artifact",
        description="The intent of a customer-service message, its calibrated confidence, and whether to hand "
                    "the conversation over to a human.")


def answer_tool(export: str) -> StructuredTool:
    """The best answers for a customer question from the export's answer index."""
    loaders.retriever_dir(export)

    def run(question: str, k: int = 3) -> tuple[str, list[dict]]:
        hits = loaders.retriever(export).search([question], k)[0]
        return "\n\n".join(f"[{h['intent']}, score {h['score']:.2f}] {h['answer']}" for h in hits), hits
    return StructuredTool.from_function(
        run, name="answer_lookup", args_schema=QuestionInput, response_format="content_and_artifact",
        description="Look up the best answers to a customer-service question (one per intent) with their intents "
                    "and similarity scores.")


def support_tools(support_export: str, sentiment_export: str | None = None) -> list[StructuredTool]:
    """The customer-service tools: intent and hand-over, answer lookup, and sentiment when a
    sentiment export is given."""
    tools = [intent_tool(support_export), answer_tool(support_export)]
    return tools + ([sentiment_tool(sentiment_export)] if sentiment_export else [])
