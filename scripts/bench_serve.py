"""Serving benchmark for the demo: starts demo/app.py, measures the cold start (process start to
the first answer, model loading and compilation included), then latency (p50/p95) and requests/s
of /sentiment and /support at concurrency 1 and 16 on real texts (MR test reviews, Bitext held-out
questions). Each client is a thread with its own HTTP connection using Gradio's HTTP API (POST
/gradio_api/call/<endpoint>, then read the result stream), through the app's queue. The same
calls through gradio_client at concurrency 1 are timed as well: that client adds ~70 ms of its
own per call on this machine (an echo endpoint measures 80 ms with it, 7 ms over plain HTTP).

    python scripts/bench_serve.py [--sentiment-model runs/sentiment_mr/export]
        [--support-model runs/support_qa/export] [--requests 64] [--port 7871] [--cold-only]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, installed or not

from autogpt_jax.data import sources  # noqa: E402


def texts() -> tuple[list[str], list[str]]:
    reviews = list(sources.load_dataset("mr")["test"]["text"])[:400]
    questions = list(sources.load_dataset("bitext_support")["test"]["question"])[:400]
    return reviews, questions


def call(http, url: str, endpoint: str, text: str) -> dict:
    """One request over Gradio's HTTP API: submit, then read the event stream to its result."""
    r = http.post(f"{url}gradio_api/call{endpoint}", json={"data": [text]})
    r.raise_for_status()
    body = http.get(f"{url}gradio_api/call{endpoint}/{r.json()['event_id']}").text
    event = data = None
    for line in body.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data = line.split(":", 1)[1].strip()
    if event != "complete":
        raise RuntimeError(f"{endpoint}: {event}: {data}")
    return json.loads(data)[0]


def run(url: str, endpoint: str, pool: list[str], n: int, concurrency: int, *, client: str = "http") -> dict:
    import httpx
    from gradio_client import Client

    if client == "http":
        sessions = [httpx.Client(timeout=120) for _ in range(concurrency)]
        fns = [lambda t, h=h: call(h, url, endpoint, t) for h in sessions]
    else:
        sessions = [Client(url, verbose=False) for _ in range(concurrency)]
        fns = [lambda t, c=c: c.predict(t, api_name=endpoint) for c in sessions]
    for f in fns:  # one warm call per client (connection set-up is not what we time)
        f(pool[0])
    lat: list[float] = []

    def worker(i: int):
        out = []
        for j in range(i, n, concurrency):
            t0 = time.perf_counter()
            fns[i](pool[j % len(pool)])
            out.append(1000 * (time.perf_counter() - t0))
        return out

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as ex:
        for part in ex.map(worker, range(concurrency)):
            lat += part
    wall = time.perf_counter() - t0
    a = np.asarray(lat)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "rps": n / wall, "n": n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentiment-model", default=str(ROOT / "runs/sentiment_mr/export"))
    ap.add_argument("--support-model", default=str(ROOT / "runs/support_qa/export"))
    ap.add_argument("--requests", type=int, default=64, help="requests per endpoint and concurrency")
    ap.add_argument("--port", type=int, default=7871)
    ap.add_argument("--cold-only", action="store_true", help="measure the cold start only (run it twice: the "
                    "second start reads the first one's executables from the persistent compilation cache)")
    args = ap.parse_args(argv)
    from gradio_client import Client

    reviews, questions = texts()
    url = f"http://127.0.0.1:{args.port}/"
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_serve_{args.port}.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "demo/app.py"), "--port", str(args.port), "--sentiment-model",
                             args.sentiment_model, "--support-model", args.support_model], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        cold = None
        while cold is None:
            if proc.poll() is not None:
                raise SystemExit(f"the app exited with {proc.returncode}; see {log.name}")
            try:
                Client(url, verbose=False).predict("a first question", api_name="/sentiment")
                cold = time.perf_counter() - t0
            except Exception:
                time.sleep(0.5)
                if time.perf_counter() - t0 > 900:
                    raise SystemExit("the app did not answer within 900 s")
        print(f"cold start to the first answer: {cold:.1f} s (load, compile every length bucket, serve)", flush=True)
        if args.cold_only:
            return 0
        print(f"{'endpoint':<12}{'client':<15}{'concurrency':>12}{'p50 ms':>10}{'p95 ms':>10}{'requests/s':>12}")
        for endpoint, pool in (("/sentiment", reviews), ("/support", questions)):
            for client, conc in (("http", 1), ("http", 16), ("gradio_client", 1)):
                r = run(url, endpoint, pool, max(args.requests, conc * 4), conc, client=client)
                print(f"{endpoint:<12}{client:<15}{conc:>12}{r['p50_ms']:>10.1f}{r['p95_ms']:>10.1f}{r['rps']:>12.1f}",
                      flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
