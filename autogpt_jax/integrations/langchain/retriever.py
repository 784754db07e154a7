"""``AutoGPTJaxRetriever``: the answer index of a customer-service export as a LangChain
retriever. Each ``Document`` is one answer, with its intent, cosine score and answer id (its line
in ``answers.jsonl``) in the metadata."""

from __future__ import annotations

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, field_validator

from autogpt_jax.errors import IntegrationError
from autogpt_jax.integrations.langchain import loaders


def _check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise IntegrationError(f"k must be a whole number >= 1 (the number of answers to return), got {k!r}")
    return k


class AutoGPTJaxRetriever(BaseRetriever):
    """The ``k`` best answers for a question (by default the best answer of each of the ``k``
    best intents: ``distinct_intents``).

    Example::

        retriever = AutoGPTJaxRetriever(export="runs/support_qa/export", k=3)
        for doc in retriever.invoke("I want my money back"):
            print(doc.metadata["intent"], doc.metadata["score"], doc.page_content[:60])
    """

    model_config = ConfigDict(extra="forbid")

    export: str = Field(description="a customer-service export directory, or its retriever/ folder")
    k: int = Field(default=3, description="answers per question (>= 1)")
    distinct_intents: bool = Field(default=True, description="one answer per intent")

    @field_validator("k")
    @classmethod
    def _k(cls, k: int) -> int:
        return _check_k(k)

    @field_validator("export")
    @classmethod
    def _export(cls, export: str) -> str:
        loaders.retriever_dir(export)  # a clear error now for a directory without an answer index
        return export

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None) -> list[Document]:
        k = self.k if k is None else _check_k(k)
        hits = loaders.retriever(self.export).search([str(query)], k, distinct_intents=self.distinct_intents)[0]
        return [Document(page_content=h["answer"], id=str(h["id"]),
                         metadata={"intent": h["intent"], "score": h["score"], "answer_id": h["id"]}) for h in hits]
