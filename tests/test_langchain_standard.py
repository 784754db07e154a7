"""langchain-tests' standard suites (the ones LangChain's partner packages run against themselves)
on our LangChain components, over tiny exports built in this session: a random two-layer Llama
with SmolLM2's tokenizer and chat template, exported by our pipeline (the chat model), the customer-service run's export
(embeddings, retriever, intent and answer tools) and the sentiment run's (sentiment tool).

A test a component cannot pass is switched off by the suite's own flags, each with its reason
beside it (no tool calling, no structured output, no image or audio input); no test is
overridden or skipped by hand."""

import pytest

pytest.importorskip("langchain_tests")

from langchain_tests.integration_tests import (  # noqa: E402
    ChatModelIntegrationTests,
    EmbeddingsIntegrationTests,
    RetrieversIntegrationTests,
    ToolsIntegrationTests,
)
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests, ToolsUnitTests  # noqa: E402

from autogpt_jax.integrations.langchain import (  # noqa: E402
    AutoGPTJaxEmbeddings,
    AutoGPTJaxRetriever,
    ChatAutoGPTJax,
    answer_tool,
    intent_tool,
    sentiment_tool,
)


@pytest.fixture(scope="session")
def tiny_llama_export(tmp_path_factory, tiny_llama_dir):
    """The tiny random Llama through our pipeline's export stage (a task-less export: the model,
    its tokenizer and chat template, autogpt_jax.json)."""
    from autogpt_jax.config import load_config
    from autogpt_jax.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("llama_export")
    run_pipeline(load_config(["--config_path", "tests/configs/tiny_pretrain.yaml", "--model.name_or_path",
                              str(tiny_llama_dir), "--model.tokenizer", str(tiny_llama_dir), "--model.arch", "llama",
                              "--stages", "export", "--output_dir", str(out), "--logging.tensorboard", "false"]))
    return out / "export"


class _Chat:
    """The chat model over the tiny random Llama's export (and, for the per-call model override,
    the tiny Qwen2's model directory). It cannot call tools (bind_tools raises with the reason), so
    the tool-calling and structured-output tests are off; it reads text only."""

    @pytest.fixture(autouse=True)
    def _model_dirs(self, tiny_llama_export, tiny_qwen2_dir):
        self.model_dir, self.other_dir = str(tiny_llama_export), str(tiny_qwen2_dir)

    @property
    def model_override_value(self) -> str:
        return self.other_dir  # invoke(..., model=...) generates with another decoder

    @property
    def chat_model_class(self):
        return ChatAutoGPTJax

    @property
    def has_tool_calling(self) -> bool:
        return False  # the 135M decoders do not choose tools reliably; routing is by calibrated classifiers

    @property
    def has_structured_output(self) -> bool:
        return False  # structured output would need tool calling or constrained decoding


class TestChatUnit(_Chat, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict:
        return {"model": self.model_dir}


class TestChatIntegration(_Chat, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict:
        return {"model": self.model_dir, "max_tokens": 8}


class _Embeddings:
    @pytest.fixture(autouse=True)
    def _export(self, support_run):
        self.export = str(support_run[0] / "export")

    @property
    def embeddings_class(self):
        return AutoGPTJaxEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": self.export}


class TestEmbeddingsUnit(_Embeddings, EmbeddingsUnitTests):
    pass


class TestEmbeddingsIntegration(_Embeddings, EmbeddingsIntegrationTests):
    pass


class TestRetriever(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _export(self, support_run):
        self.export = str(support_run[0] / "export")

    @property
    def retriever_constructor(self):
        return AutoGPTJaxRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"export": self.export, "k": 3}

    @property
    def retriever_query_example(self) -> str:
        return "I want to cancel my order"


class _SupportTool:
    """One of the customer-service tools (``make`` over the ``export`` run's export), invoked with ``example``."""

    make, export, example = None, "", {}

    @pytest.fixture(autouse=True)
    def _exports(self, support_run, sentiment_run):
        self.exports = {"support": str(support_run[0] / "export"), "sentiment": str(sentiment_run[0] / "export")}

    @property
    def tool_constructor(self):
        return type(self).make(self.exports[self.export])

    @property
    def tool_invoke_params_example(self) -> dict:
        return self.example


class _IntentTool(_SupportTool):
    make, export, example = intent_tool, "support", {"message": "how do I get a refund?"}


class _AnswerTool(_SupportTool):
    make, export, example = answer_tool, "support", {"question": "where is my invoice?", "k": 2}


class _SentimentTool(_SupportTool):
    make, export, example = sentiment_tool, "sentiment", {"text": "Terrible service, I am furious"}


class TestIntentToolUnit(_IntentTool, ToolsUnitTests):
    pass


class TestIntentToolIntegration(_IntentTool, ToolsIntegrationTests):
    pass


class TestAnswerToolUnit(_AnswerTool, ToolsUnitTests):
    pass


class TestAnswerToolIntegration(_AnswerTool, ToolsIntegrationTests):
    pass


class TestSentimentToolUnit(_SentimentTool, ToolsUnitTests):
    pass


class TestSentimentToolIntegration(_SentimentTool, ToolsIntegrationTests):
    pass
