"""``AutoGPTJaxEmbeddings``: the bi-encoder of a customer-service export (or any encoder) as
LangChain ``Embeddings``: unit-length mean-pooled vectors, batched by length bucket (one
compilation per bucket and batch size, ``retrieval.encoder.embed``), as plain Python floats."""

from __future__ import annotations

import numpy as np
from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, field_validator

from autogpt_jax.integrations.langchain import loaders
from autogpt_jax.models import hub
from autogpt_jax.retrieval.encoder import embed


class AutoGPTJaxEmbeddings(BaseModel, Embeddings):
    """Embeddings from a customer-service export (its fine-tuned retriever: queries are read at
    its question length, documents at its answer length), an encoder's export or model
    directory, or a packaged short name (``minilm-l6``).

    Example::

        emb = AutoGPTJaxEmbeddings(model="runs/support_qa/export")
        emb.embed_query("where is my parcel?")  # 384 floats, unit length
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="customer-service export, encoder export or model directory, or short name")
    batch_size: int = Field(default=64, ge=1, description="texts per compiled batch")
    max_length: int | None = Field(default=None, ge=8, description="token limit (default: the retriever's, else 128)")

    @field_validator("model")
    @classmethod
    def _model(cls, model: str) -> str:
        return hub.check_name(model)  # a clear error now for a directory that does not exist

    def _vectors(self, texts: list[str], document: bool) -> list[list[float]]:
        enc = loaders.encoder(self.model)
        length = self.max_length or (enc.document_max_length if document else enc.query_max_length)
        texts = [str(t) for t in texts]
        return np.asarray(embed(enc.model, enc.tokenizer, texts, length, self.batch_size), np.float64).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._vectors(texts, document=True)

    def embed_query(self, text: str) -> list[float]:
        return self._vectors([text], document=False)[0]
