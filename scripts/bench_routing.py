"""Who should route a customer's message, the calibrated intent model or the chat model choosing a
tool? (issue 20: the support graph routes by the calibrated classifiers unless the small decoder
is measured to choose reliably.)

The same messages go to both: ``--n`` held-out Bitext questions (in scope: they should be
answered) and ``--n`` CLINC150 out-of-scope test queries (they should go to a human).

- ours: the customer-service export's intent model with its calibrated hand-over threshold
  (``SupportAssistant.classify``);
- the chat model (``ChatAutoGPTJax``, greedy): it is told the two tools and asked to reply with
  the name of the one to use. A reply that names neither, or both, counts as wrong.

Prints the routing accuracy of each (in scope, out of scope, both) and the messages per second.

    python scripts/bench_routing.py --support-model runs/support_qa/export [--chat-model smollm2-135m]
        [--n 50] [--results benchmarks/results/issue20_routing.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, installed or not

from langchain_core.messages import HumanMessage, SystemMessage  # noqa: E402
from tqdm import tqdm  # noqa: E402

from autogpt_jax.data import sources  # noqa: E402
from autogpt_jax.export_format import load_assistant  # noqa: E402
from autogpt_jax.integrations.langchain import ChatAutoGPTJax  # noqa: E402

TOOLS = ("You are the router of an online shop's customer-service chat. You have two tools:\n"
         "- answer_lookup: answers customer-service questions about orders, cancellations, payments, refunds, "
         "delivery, shipping addresses, invoices, accounts, newsletters, complaints and contacting the shop.\n"
         "- handover: passes the message to a human, for anything that is not a customer-service question "
         "about the shop.\n"
         "Reply with the tool's name only: answer_lookup or handover.")


def chat_route(reply: str) -> str | None:
    """``answer``, ``handover`` or None (names neither tool, or both)."""
    r = reply.lower()
    said = {"answer": "answer" in r or "lookup" in r, "handover": "handover" in r or "hand over" in r or "human" in r}
    return next(k for k, v in said.items() if v) if sum(said.values()) == 1 else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--support-model", default=str(ROOT / "runs" / "support_qa" / "export"))
    ap.add_argument("--chat-model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=50, help="messages of each kind (in scope, out of scope)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", help="write the figures to this JSON file")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    bitext = list(sources.load_dataset("bitext_support")["test"]["text"])
    oos = sources.out_of_scope("clinc150")["test"]
    msgs = [bitext[i] for i in rng.choice(len(bitext), args.n, replace=False)] + \
           [oos[i] for i in rng.choice(len(oos), args.n, replace=False)]
    want = ["answer"] * args.n + ["handover"] * args.n

    assistant = load_assistant(args.support_model)
    assistant.classify(msgs[:2])  # compiled before timing
    t0 = time.perf_counter()
    ours = ["handover" if r["handover"] else "answer" for r in assistant.classify(msgs)]
    ours_s = time.perf_counter() - t0

    chat = ChatAutoGPTJax(model=args.chat_model, max_tokens=8)
    chat.invoke([SystemMessage(TOOLS), HumanMessage("hello")])  # loaded and compiled before timing
    t0 = time.perf_counter()
    replies = [chat.invoke([SystemMessage(TOOLS), HumanMessage(m)]).text
               for m in tqdm(msgs, desc="chat model routing", unit="msg")]
    chat_s = time.perf_counter() - t0
    theirs = [chat_route(r) for r in replies]

    def acc(got, part):
        idx = range(len(msgs)) if part == "all" else range(args.n) if part == "in" else range(args.n, 2 * args.n)
        return float(np.mean([got[i] == want[i] for i in idx]))

    out = {"n_per_kind": args.n, "support_model": args.support_model, "chat_model": args.chat_model,
           "command": "python " + " ".join(sys.argv),
           "calibrated": {p: acc(ours, p) for p in ("in", "out", "all")} | {"messages_per_s": len(msgs) / ours_s},
           "chat_tool_choice": {p: acc(theirs, p) for p in ("in", "out", "all")}
           | {"messages_per_s": len(msgs) / chat_s, "unparsed": sum(t is None for t in theirs),
              "replies_sample": replies[:3] + replies[-3:]}}
    for name in ("calibrated", "chat_tool_choice"):
        r = out[name]
        print(f"{name:17s} in scope {100 * r['in']:.0f}%  out of scope {100 * r['out']:.0f}%  "
              f"both {100 * r['all']:.0f}%  ({r['messages_per_s']:.1f} messages/s)")
    print(f"chat replies that name neither tool or both: {out['chat_tool_choice']['unparsed']} of {len(msgs)}")
    if args.results:
        Path(args.results).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
