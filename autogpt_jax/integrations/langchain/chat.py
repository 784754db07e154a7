"""``ChatAutoGPTJax``: our decoder's generation (``models.generation``) as a LangChain chat model.

The conversation goes through the tokenizer's chat template (SmolLM2, Llama) or, for a model
without one (GPT-2), a plain ``User: ... / Assistant:`` transcript. Tokens are generated one step at
a time with the KV cache (``stream_tokens``), so ``stream`` yields text as it is produced and
``invoke`` returns the same text. The model loads on first use (``loaders.decoder``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage, ChatMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import Field, field_validator

from autogpt_jax.buckets import bucket_length
from autogpt_jax.errors import IntegrationError
from autogpt_jax.integrations.langchain import loaders
from autogpt_jax.models import hub
from autogpt_jax.models.generation import cut_at_stop, end_tokens, left_padded, stream_tokens

ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "tool"}
PLAIN_STOP = "\nUser:"  # where a model without a chat template would start the user's next turn


def chat_turns(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """The conversation as chat-template turns (``role``, ``content``: the messages' text)."""
    if not messages:
        raise IntegrationError("ChatAutoGPTJax got an empty message list: pass at least one message "
                               "(a string, or a list of messages ending with the user's)")
    return [{"role": m.role if isinstance(m, ChatMessage) else ROLES.get(m.type, m.type), "content": m.text}
            for m in messages]


def _held_back(text: str, stops: list[str]) -> str:
    """``text`` without a trailing piece that may be the start of a stop string, or of a character
    whose bytes are not all decoded yet: what is safe to stream now."""
    keep = len(text)
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = min(keep, len(text) - n)
                break
    text = text[:keep]
    return text.rstrip("\ufffd")


class ChatAutoGPTJax(BaseChatModel):
    """A chat model over our decoder: an export directory (``runs/<name>/export``), a model
    directory, a .gguf file or a packaged short name (``smollm2-135m``). ``temperature`` 0 is
    greedy. Tool calling is not supported (``bind_tools`` says so): route with the calibrated
    classifiers instead (``build_support_graph``, the tools of this package).

    Example::

        chat = ChatAutoGPTJax(model="smollm2-135m", max_tokens=64)
        chat.invoke("What is the capital of France?").content
        for chunk in chat.stream("Tell me a joke"):
            print(chunk.content, end="")
    """

    model: str = Field(default="smollm2-135m", description="export or model directory, .gguf file or short name")
    temperature: float = Field(default=0.0, ge=0.0, description="0: greedy; above 0: sampled")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="nucleus sampling mass (with temperature > 0)")
    max_tokens: int = Field(default=256, ge=1, description="the most tokens a reply has")
    stop: list[str] | None = Field(default=None, description="strings that end a reply (not included)")
    seed: int = Field(default=0, description="the sampling seed (with temperature > 0)")

    @field_validator("model")
    @classmethod
    def _model(cls, model: str) -> str:
        return hub.check_name(model)  # a clear error now for a directory that does not exist

    @property
    def _llm_type(self) -> str:
        return "autogpt-jax-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "seed": self.seed}

    def bind_tools(self, tools, *, tool_choice=None, **kwargs):
        raise NotImplementedError(
            "ChatAutoGPTJax does not support tool calling: the small decoders it serves do not choose tools "
            "reliably. Call the tools directly (autogpt_jax.integrations.langchain.support_tools) or let the "
            "calibrated classifiers route (build_support_graph).")

    def _prompt(self, dec: loaders.Decoder, turns: list[dict[str, str]]) -> tuple[list[int], list[str]]:
        """The prompt's token ids, and the stop strings its format adds."""
        if dec.chat:
            text = dec.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            return dec.tokenizer(text, add_special_tokens=False)["input_ids"], []
        text = "".join(f"{t['role'].capitalize()}: {t['content']}\n" for t in turns) + "Assistant:"
        return dec.tokenizer(text)["input_ids"], [PLAIN_STOP]

    @staticmethod
    def _delta(text: str, run_manager: CallbackManagerForLLMRun | None) -> ChatGenerationChunk:
        chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
        if run_manager:
            run_manager.on_llm_new_token(text, chunk=chunk)
        return chunk

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        turns = chat_turns(messages)
        name = str(kwargs.get("model") or self.model)  # a per-call model, as LangChain's model override passes it
        dec = loaders.decoder(name)  # loading checks the name (hub.resolve)
        tok = dec.tokenizer
        max_new = int(kwargs.get("max_tokens") or self.max_tokens)
        ids, extra_stop = self._prompt(dec, turns)
        stops = [s for s in [*(self.stop or []), *(stop or []), *extra_stop] if s]
        room = dec.max_positions - max_new
        if len(ids) > room:
            raise IntegrationError(f"the conversation is {len(ids)} tokens and {name} holds "
                                   f"{dec.max_positions} positions, {max_new} of them for the reply (max_tokens): "
                                   "shorten the conversation or lower max_tokens")
        padded, mask = left_padded(tok, [ids], min(bucket_length(len(ids)), room))
        eos = end_tokens(tok, stops)
        out: list[int] = []
        sent, finish = "", "length"
        steps = stream_tokens((dec.graphdef, dec.state), padded, mask, max_new_tokens=max_new,
                              temperature=float(kwargs.get("temperature", self.temperature)),
                              top_p=float(kwargs.get("top_p", self.top_p)), eos_token_id=eos,
                              seed=int(kwargs.get("seed", self.seed)), min_new_tokens=1)
        for tok_B in steps:
            t = int(tok_B[0])
            if t in eos:
                finish = "stop"
                break
            out.append(t)
            text = tok.decode(out, skip_special_tokens=True)
            cut = cut_at_stop(text, stops)
            safe = cut if cut != text else _held_back(text, stops)
            if len(safe) > len(sent) and safe.startswith(sent):
                yield self._delta(safe[len(sent):], run_manager)
                sent = safe
            if cut != text:
                finish = "stop"
                break
        rest = cut_at_stop(tok.decode(out, skip_special_tokens=True), stops)  # what was held back
        if len(rest) > len(sent) and rest.startswith(sent):
            yield self._delta(rest[len(sent):], run_manager)
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", chunk_position="last",
            usage_metadata={"input_tokens": len(ids), "output_tokens": len(out), "total_tokens": len(ids) + len(out)},
            response_metadata={"model_name": name, "finish_reason": finish}))

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
