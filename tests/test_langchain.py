"""The LangChain edition beyond the standard suites: streaming generation equals the compiled
loop, the components return what the export's own objects return, the support graph answers,
escalates (interrupt, resumed with a human's reply) and flags like the demo, and bad input gets
one clear error each."""

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("langgraph")

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402
from langgraph.types import Command  # noqa: E402

from autogpt_jax.data import sources  # noqa: E402
from autogpt_jax.errors import IntegrationError, ModelNotFoundError  # noqa: E402
from autogpt_jax.export_format import load_assistant  # noqa: E402
from autogpt_jax.integrations.langchain import (  # noqa: E402
    AutoGPTJaxEmbeddings,
    AutoGPTJaxRetriever,
    ChatAutoGPTJax,
    answer_tool,
    build_support_graph,
    intent_tool,
    sentiment_tool,
)
from autogpt_jax.integrations.langchain import loaders  # noqa: E402
from autogpt_jax.integrations.langchain.chat import chat_turns  # noqa: E402
from autogpt_jax.integrations.langchain.tools import sentiment_record  # noqa: E402
from autogpt_jax.models import generate, load_model  # noqa: E402
from autogpt_jax.models.generation import stream_tokens  # noqa: E402


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_streamed_tokens_are_the_compiled_loops(gpt2_dir, temperature):
    model = load_model(gpt2_dir).model
    ids = np.random.default_rng(5).integers(1, 1000, size=(2, 7))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    want = np.asarray(generate(model, ids, mask, max_new_tokens=9, temperature=temperature, seed=4))
    got = np.stack(list(stream_tokens(model, ids, mask, max_new_tokens=9, temperature=temperature, seed=4)), 1)
    np.testing.assert_array_equal(got, want)
    # An end token stops the stream once every row has produced one; min_new_tokens keeps it out.
    eos = int(np.asarray(generate(model, ids[:1], max_new_tokens=1))[0, 0])  # the greedy first token
    assert len(list(stream_tokens(model, ids[:1], max_new_tokens=9, eos_token_id=eos))) == 1
    first = next(stream_tokens(model, ids[:1], max_new_tokens=9, eos_token_id=eos, min_new_tokens=1))
    assert int(first[0]) != eos


def test_chat_model_streams_what_it_invokes(tiny_llama_dir):
    chat = ChatAutoGPTJax(model=str(tiny_llama_dir), max_tokens=12)
    convo = [SystemMessage("Be brief."), HumanMessage("Hello there"), AIMessage("Hi!"), HumanMessage("How are you?")]
    msg = chat.invoke(convo)
    chunks = list(chat.stream(convo))
    assert msg.content and "".join(c.content for c in chunks) == msg.content
    u = msg.usage_metadata
    prompt = chat._prompt(loaders.decoder(str(tiny_llama_dir)), chat_turns(convo))[0]
    assert u["input_tokens"] == len(prompt) and 1 <= u["output_tokens"] <= 12
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"]
    assert msg.response_metadata["model_name"] == str(tiny_llama_dir)
    # A stop string ends the reply before it; sampling is seeded.
    stop = msg.content.strip()[2:5]
    if stop:
        cut = chat.invoke(convo, stop=[stop]).content
        assert stop not in cut and msg.content.startswith(cut)
    hot = ChatAutoGPTJax(model=str(tiny_llama_dir), max_tokens=12, temperature=1.0, top_p=0.9, seed=3)
    assert hot.invoke(convo).content == hot.invoke(convo).content
    with pytest.raises(NotImplementedError, match="does not support tool calling"):
        chat.bind_tools([answer_tool])


def test_embeddings_and_retriever_return_the_exports_own(support_run):
    export = support_run[0] / "export"
    a = load_assistant(export)
    emb = AutoGPTJaxEmbeddings(model=str(export))
    q = emb.embed_query("I want to cancel my order")
    assert all(type(x) is float for x in q)
    np.testing.assert_allclose(q, a.retriever.encode_questions(["I want to cancel my order"])[0], atol=1e-6)
    docs = emb.embed_documents(["a", "bb", "ccc"])
    assert len(docs) == 3 and {len(d) for d in docs} == {len(q)}
    got = AutoGPTJaxRetriever(export=str(export), k=2).invoke("where is my refund?", k=4)
    want = a.retriever.search(["where is my refund?"], 4)[0]
    assert [(d.page_content, d.metadata["intent"], d.metadata["answer_id"]) for d in got] == \
           [(w["answer"], w["intent"], w["id"]) for w in want]
    assert [d.metadata["score"] for d in got] == pytest.approx([w["score"] for w in want])
    assert a.retriever.answers[got[0].metadata["answer_id"]].text == got[0].page_content


def test_tools_return_the_models_records(support_run, sentiment_run):
    support, sentiment = str(support_run[0] / "export"), str(sentiment_run[0] / "export")
    rec = load_assistant(support).answer(["how do I get a refund?"])[0]
    msg = intent_tool(support).invoke({"type": "tool_call", "id": "1", "name": "customer_intent",
                                       "args": {"message": "how do I get a refund?"}})
    assert msg.artifact["intent"] == rec["intent"] and msg.artifact["handover"] == rec["handover"]
    assert rec["intent"] in msg.content
    hits = answer_tool(support).invoke({"type": "tool_call", "id": "2", "name": "answer_lookup",
                                        "args": {"question": "how do I get a refund?", "k": 3}}).artifact
    assert [h["answer"] for h in hits] == [h["answer"] for h in rec["answers"]]
    mood = sentiment_tool(sentiment).invoke({"type": "tool_call", "id": "3", "name": "sentiment",
                                             "args": {"text": "Terrible service"}}).artifact
    assert set(mood["probabilities"]) == {"negative", "positive"} and sum(mood["probabilities"].values()) == \
        pytest.approx(1.0)


def _demo_services():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demo"))
    import services  # the models behind demo/app.py

    return services


def _answered_questions(assistant, keep, n=3):
    """Bitext test questions the tiny intent model gets right and is confident about (and that
    ``keep`` accepts)."""
    test = sources.load_dataset("bitext_support")["test"]
    names = test.features["label"].names
    texts, gold = list(test["text"])[:300], [names[i] for i in list(test["label"])[:300]]
    recs = assistant.classify(texts)
    picked = [(t, g) for t, g, r in zip(texts, gold, recs) if r["intent"] == g and not r["handover"] and keep(t)]
    assert len(picked) >= n, f"the tiny intent model answers {len(picked)} of 300 Bitext test questions right"
    return picked[:n]


def test_support_graph_answers_escalates_and_flags(support_run, sentiment_run):
    support, sentiment = str(support_run[0] / "export"), str(sentiment_run[0] / "export")
    a = load_assistant(support)
    angry, calm = "This is the worst service ever, I am furious and disgusted", "Thanks, lovely and helpful"
    neg = {t: sentiment_record(sentiment, t)["probabilities"]["negative"] for t in (angry, calm)}
    assert neg[angry] > neg[calm]
    # The tiny sentiment model is not sure of anything: flag above the calm message's negativity.
    unhappy_at = (neg[angry] + neg[calm]) / 2
    graph = build_support_graph(support, sentiment_export=sentiment, unhappy_at=unhappy_at)
    demo = _demo_services().Support(Path(support), None, warmup=())
    # Three Bitext questions: answered with their intents and the demo's answers, no hand-over.
    calm_enough = lambda t: sentiment_record(sentiment, t)["probabilities"]["negative"] < unhappy_at  # noqa: E731
    for i, (q, intent) in enumerate(_answered_questions(a, calm_enough)):
        out = graph.invoke({"question": q}, {"configurable": {"thread_id": f"bitext-{i}"}})
        want = demo.answer([q])[0]  # the demo's /support record
        assert "__interrupt__" not in out and not out["escalated"] and not out["unhappy"]
        assert out["intent"] == intent == want["intent"] and out["answer"] == want["answer"]
    # An out-of-scope CLINC150 question the model is unsure of: interrupted, resumed with a human reply.
    oos = next(t for t in sources.out_of_scope("clinc150")["test"] if a.classify([t])[0]["handover"])
    cfg = {"configurable": {"thread_id": "oos"}}
    out = graph.invoke({"question": oos}, cfg)
    (intr,) = out["__interrupt__"]
    assert intr.value["question"] == oos and "below the hand-over threshold" in intr.value["reason"]
    done = graph.invoke(Command(resume="A colleague will call you back today."), cfg)
    assert done["escalated"] and done["answer"] == done["human_reply"] == "A colleague will call you back today."
    # An angry message is flagged for a human, whatever the intent model makes of it.
    out = graph.invoke({"question": angry}, {"configurable": {"thread_id": "angry"}})
    (intr,) = out["__interrupt__"]
    assert out["unhappy"] and intr.value["unhappy"] and "the customer sounds unhappy" in intr.value["reason"]
    assert ("below the hand-over threshold" in intr.value["reason"]) == a.classify([angry])[0]["handover"]


def test_bad_inputs_get_one_clear_error_each(tmp_path, support_run, sentiment_run, tiny_bert_dir):
    support, sentiment = str(support_run[0] / "export"), str(sentiment_run[0] / "export")
    missing = str(tmp_path / "no_such_export")
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        ChatAutoGPTJax(model=missing)
    for build in (lambda: AutoGPTJaxRetriever(export=missing), lambda: build_support_graph(missing),
                  lambda: intent_tool(missing), lambda: sentiment_tool(missing)):
        with pytest.raises(ValueError, match="is not a directory"):
            build()
    with pytest.raises(IntegrationError, match="empty message list"):
        ChatAutoGPTJax(model=str(tiny_bert_dir)).invoke([])
    with pytest.raises(IntegrationError, match="this is an encoder"):
        ChatAutoGPTJax(model=str(tiny_bert_dir)).invoke("hi")
    with pytest.raises(ValueError, match="k must be a whole number >= 1"):
        AutoGPTJaxRetriever(export=support, k=0)
    with pytest.raises(IntegrationError, match="k must be a whole number >= 1"):
        AutoGPTJaxRetriever(export=support).invoke("refund", k=0)
    # An export of the wrong kind: the sentiment model as the retriever or the assistant, and back.
    with pytest.raises(ValueError, match="has no answer index"):
        AutoGPTJaxRetriever(export=sentiment)
    with pytest.raises(IntegrationError, match="not a customer-service export"):
        build_support_graph(sentiment)
    with pytest.raises(IntegrationError, match="not a sentiment export"):
        sentiment_tool(support)


def test_a_model_loads_in_another_thread(tiny_qwen2_dir):
    """Async LangChain calls run the chat model in an executor thread: the first load may happen
    there, and must not need the main thread's flax settings."""
    import asyncio

    chat = ChatAutoGPTJax(model=str(tiny_qwen2_dir), max_tokens=4)
    loaders._LOADED.pop(("decoder", str(tiny_qwen2_dir.resolve())), None)  # loaded by no earlier test
    assert asyncio.run(chat.ainvoke("hello")).content
