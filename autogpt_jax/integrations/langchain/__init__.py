"""The LangChain edition: our models as LangChain components (``pip install 'autogpt_jax[langchain]'``).

- ``ChatAutoGPTJax``: a chat model over our decoder (an export, or ``smollm2-135m``), streaming.
- ``AutoGPTJaxEmbeddings``: the bi-encoder of a customer-service export, or any encoder.
- ``AutoGPTJaxRetriever``: the answer index of a customer-service export.
- ``sentiment_tool``, ``intent_tool``, ``answer_tool``, ``support_tools``: ``StructuredTool``s.
- ``build_support_graph``: classify → retrieve → answer, or escalate to a human (LangGraph).

Every component holds a directory or a name and loads its model on first use, once per process.
"""

try:
    import langchain_core  # noqa: F401
    import langgraph  # noqa: F401
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError("autogpt_jax.integrations.langchain needs langchain-core and langgraph: "
                      "pip install 'autogpt_jax[langchain]'") from e

from autogpt_jax.integrations.langchain.chat import ChatAutoGPTJax
from autogpt_jax.integrations.langchain.embeddings import AutoGPTJaxEmbeddings
from autogpt_jax.integrations.langchain.graph import SupportState, build_support_graph
from autogpt_jax.integrations.langchain.retriever import AutoGPTJaxRetriever
from autogpt_jax.integrations.langchain.tools import answer_tool, intent_tool, sentiment_tool, support_tools

__all__ = ["AutoGPTJaxEmbeddings", "AutoGPTJaxRetriever", "ChatAutoGPTJax", "SupportState", "answer_tool",
           "build_support_graph", "intent_tool", "sentiment_tool", "support_tools"]
