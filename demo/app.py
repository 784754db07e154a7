"""autogpt_jax demo (Gradio): a sentiment model and a customer-service assistant, both trained by
the autogpt_jax pipeline, plus how they were made.

    python demo/app.py [--host 127.0.0.1] [--port 7860] [--sentiment-model DIR] [--support-model DIR]

Models are export/ directories of autogpt_jax runs: --sentiment-model (env
AUTOGPT_JAX_SENTIMENT_MODEL; default models/sentiment beside this file, else
runs/sentiment_mr_best/export, else runs/sentiment_mr/export) and --support-model (env AUTOGPT_JAX_SUPPORT_MODEL; default
models/support, else runs/support_qa/export). Either may be missing; its tab then says how to train it.

API (gradio_client or HTTP): /sentiment and /support, each one text in, one JSON object out.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import sys

import gradio as gr
import pandas as pd

# The services behind the tabs (demo/services.py) sit beside this file, in the repository and in a
# Space (scripts/build_space.py copies both). services puts autogpt_jax on sys.path before it imports
# it (see there), so import autogpt_jax through services only, never above this line.
from services import (API_CONCURRENCY, LATENCY_BUDGET_MS, MAX_BATCH, MAX_CHARS, WARMUP_BATCHES, WARMUP_ENV,
                      OFF_HELP, Sentiment, Support, chat_reply, clean, enable_cache, find_exports, how_it_works, load,
                      sentiment_records, support_records, warmup_batches)

# --------------------------------------------------------------------------------------------
# the app
# --------------------------------------------------------------------------------------------

SENTIMENT_EXAMPLES = ["A gripping, beautifully acted film that stays with you.",
                      "Two hours of my life I will never get back.",
                      "The plot is thin, but the performances carry it."]
SUPPORT_EXAMPLES = ["I want to cancel my order", "How do I get a refund?", "Where is my package? This is ridiculous!"]


def build(sent: Sentiment | None, sup: Support | None):
    def ui_sentiment(text):
        t = clean(text)
        if sent is None:
            return None, None, "No sentiment model is loaded.", []
        if not t:
            return None, None, "Type some text to classify.", []
        rec = sent.classify([t])[0]
        df = pd.DataFrame({"class": list(rec["probabilities"]), "probability": list(rec["probabilities"].values())})
        scores = sent.explain(t)
        top = max((abs(v) for _, v in scores), default=0.0) or 1.0
        marks = [(w, round(v / top, 3)) for w, v in scores]  # the strongest word at full colour
        return rec["probabilities"], df, sent.prompt_for(t), marks

    def ui_support(text, history):
        history = list(history or [])
        t = clean(text)
        if sup is None:
            return history, None, "No customer-service model is loaded.", ""
        if not t:
            return history, None, "Type a question.", ""
        rec = sup.answer([t])[0]
        history += [{"role": "user", "content": html.escape(t)}, {"role": "assistant", "content": chat_reply(rec)}]
        intent = {rec["intent"]: rec["confidence"]} if rec["intent"] is not None else None
        flags = []
        if rec["handover"]:
            flags.append("**Handed over to a human agent.**")
        if rec["escalate"]:
            flags.append("**Escalated: negative sentiment.**")
        return history, intent, " ".join(flags) or "Answered by the assistant.", ""

    # The API endpoints are batched: the queue hands each call the texts of up to MAX_BATCH waiting
    # requests as one list and expects one list of results back. The annotations describe one
    # request (one text in, one JSON object out), which is what API users send and receive.
    def api_sentiment(text: str) -> dict:
        """Sentiment of one text: label and per-class probabilities (label null and a message for empty text)."""
        return [sentiment_records(sent, list(text))]

    def api_support(text: str) -> dict:
        """Answer one customer question: intent, confidence, answer, top answers, hand-over flag."""
        return [support_records(sup, list(text))]

    with gr.Blocks(title="autogpt_jax demo") as demo:
        gr.Markdown("# autogpt_jax\nFew-shot task models from a pretrained encoder, trained with JAX + Flax.")
        with gr.Tab("Sentiment", elem_id="tab-sentiment"):
            if sent is None:
                gr.Markdown("No sentiment model found: run `make demo` (it trains configs/sentiment_mr_best.yaml) or pass "
                            "`--sentiment-model`.")
            with gr.Row():
                with gr.Column(scale=3):
                    s_in = gr.Textbox(label="Text", lines=3, max_length=MAX_CHARS, elem_id="sentiment-input",
                                      placeholder="Type a movie review…")
                    s_btn = gr.Button("Classify", variant="primary", elem_id="sentiment-button")
                    gr.Examples(SENTIMENT_EXAMPLES, inputs=s_in)
                with gr.Column(scale=2):
                    s_label = gr.Label(label="Prediction", elem_id="sentiment-label")
                    s_plot = gr.BarPlot(x="class", y="probability", y_lim=[0, 1], label="Class probabilities",
                                        elem_id="sentiment-plot")
            s_prompt = gr.Textbox(label="Prompt used", interactive=False, elem_id="sentiment-prompt")
            s_words = gr.HighlightedText(label="Words that drove the decision (drop in probability without the word)",
                                         elem_id="sentiment-words")
            for ev in (s_btn.click, s_in.submit):
                ev(ui_sentiment, s_in, [s_label, s_plot, s_prompt, s_words], api_visibility="private")
        with gr.Tab("Customer service", elem_id="tab-support"):
            if sup is None:
                gr.Markdown("No customer-service model found: run `make train CONFIG=configs/support_qa.yaml` or "
                            "pass `--support-model`.")
            chat = gr.Chatbot(label="Assistant", elem_id="support-chat", height=380)
            with gr.Row():
                q = gr.Textbox(label="Your question", placeholder="Ask about an order, a refund, your account…",
                               elem_id="support-input", scale=4, max_length=MAX_CHARS)
                q_btn = gr.Button("Send", variant="primary", elem_id="support-button", scale=1)
            with gr.Row():
                intent = gr.Label(label="Detected intent", elem_id="support-intent")
                status = gr.Markdown(elem_id="support-status")
            gr.Examples(SUPPORT_EXAMPLES, inputs=q)
            for ev in (q_btn.click, q.submit):
                ev(ui_support, [q, chat], [chat, intent, status, q], api_visibility="private")
        with gr.Tab("How it works", elem_id="tab-how"):
            gr.Markdown(how_it_works(sent, sup), elem_id="how-it-works")
        for fn, name in ((api_sentiment, "sentiment"), (api_support, "support")):
            gr.api(fn, api_name=name, batch=True, max_batch_size=MAX_BATCH, concurrency_limit=API_CONCURRENCY)
    demo.queue(default_concurrency_limit=4, max_size=512)
    return demo


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    ap.add_argument("--sentiment-model", default=None)
    ap.add_argument("--support-model", default=None)
    ap.add_argument("--no-warmup", action="store_true", help="skip compiling every length bucket at start")
    ap.add_argument("--warmup-batches", default=os.environ.get(WARMUP_ENV),
                    help=f"batch sizes compiled at start, comma-separated (default: all of "
                         f"{','.join(map(str, WARMUP_BATCHES))}; env {WARMUP_ENV})")
    ap.add_argument("--latency-budget-ms", type=float, default=LATENCY_BUDGET_MS,
                    help="serve the sentiment export's distilled student when the model is slower than this")
    ap.add_argument("--no-compile-cache", action="store_true", help=OFF_HELP)
    args = ap.parse_args(argv)
    enable_cache(not args.no_compile_cache)
    logging.basicConfig(level=logging.WARNING)
    sdir, qdir = find_exports(args.sentiment_model, args.support_model)
    if sdir is None and qdir is None:
        print("warning: no models found; serving the app without them (see --help)", file=sys.stderr)
    warm = () if args.no_warmup else warmup_batches(args.warmup_batches)
    sent, sup = load(sdir, qdir, warmup=warm, latency_budget_ms=args.latency_budget_ms)
    demo = build(sent, sup)
    demo.launch(server_name=args.host, server_port=args.port, show_error=False, footer_links=["api"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
