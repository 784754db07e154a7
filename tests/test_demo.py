"""The Gradio demo against a running server: the named API endpoints through gradio_client, 200
mixed requests from 16 concurrent clients, a real browser (headless Chromium driven by
Playwright), and the Hugging Face Space folder that scripts/build_space.py assembles."""

import concurrent.futures as cf
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import xla_env

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(cmd: list[str], cwd: Path, log: Path, timeout: float = 420) -> subprocess.Popen:
    env = {k: v for k, v in xla_env(1).items() if k not in ("PYTHONPATH",)}
    env["AUTOGPT_JAX_DEMO_WARMUP_BATCHES"] = "1"  # the other batch shapes compile on first use
    f = open(log, "w")
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the app exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        if "Running on local URL" in log.read_text():
            return proc
        time.sleep(1)
    proc.kill()
    raise AssertionError(f"the app did not start in {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def exports(sentiment_run, support_run):
    """The session's sentiment run (with its distilled student) and customer-service run."""
    return sentiment_run[0] / "export", support_run[0] / "export"


@pytest.fixture(scope="module")
def app(exports, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    proc = _serve([sys.executable, str(ROOT / "demo" / "app.py"), "--port", str(port), "--sentiment-model",
                   str(exports[0]), "--support-model", str(exports[1])], ROOT, log)
    yield f"http://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(30)


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def _check_sentiment(r: dict, empty: bool = False):
    assert set(r) >= {"label", "probabilities", "model"}
    if empty:
        assert r["label"] is None and r["message"]
    else:
        assert r["label"] in ("negative", "positive") and abs(sum(r["probabilities"].values()) - 1) < 1e-4


def _check_support(r: dict):
    assert set(r) >= {"intent", "confidence", "answer", "answers", "handover", "reason", "escalate"}
    assert isinstance(r["handover"], bool) and isinstance(r["escalate"], bool)
    if r["intent"] is None:
        assert r["handover"] and r["reason"].startswith("cannot answer") and r["answer"] is None
    else:
        assert r["answer"] == r["answers"][0]["answer"] and 0 <= r["confidence"] <= 1


@pytest.mark.slow
def test_gradio_client_calls_both_endpoints(app):
    c = _client(app)
    names = set(c.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/sentiment", "/support"} <= names
    _check_sentiment(c.predict("A gripping, beautifully acted film.", api_name="/sentiment"))
    _check_sentiment(c.predict("", api_name="/sentiment"), empty=True)
    r = c.predict("I want to cancel my order", api_name="/support")
    _check_support(r)
    assert r["intent"] is not None and len(r["answers"]) == 3 and "{{" not in r["answer"]


NASTY = ["", "   ", "x" * 20000, ("where is my refund " * 1100)[:20000], "😀🎉🔥", "我想取消我的订单",
         "<script>alert('x')</script><b>bold</b>", "a\x00b\x00c", "I want to cancel my order", "Great film!",
         "Terrible service, I am furious", "&lt;&amp;"]


@pytest.mark.slow
def test_200_mixed_requests_from_16_clients(app):
    def worker(i):
        c = _client(app)
        out = []
        for j in range(i, 200, 16):
            # pairs of requests: the same text to both endpoints, so each endpoint gets every text
            text = NASTY[(j // 2) % len(NASTY)]
            endpoint = "/sentiment" if j % 2 == 0 else "/support"
            out.append((endpoint, text, c.predict(text, api_name=endpoint)))
        return out

    with cf.ThreadPoolExecutor(16) as ex:
        results = [r for rs in ex.map(worker, range(16)) for r in rs]
    assert len(results) == 200
    assert {(e, t) for e, t, _ in results} == {(e, t) for e in ("/sentiment", "/support") for t in NASTY}
    for endpoint, text, r in results:
        json.dumps(r)
        if endpoint == "/sentiment":
            _check_sentiment(r, empty=not text.replace("\x00", "").strip())
        else:
            _check_support(r)
    # still answering afterwards
    _check_sentiment(_client(app).predict("still there?", api_name="/sentiment"))


@pytest.mark.slow
def test_browser_types_into_each_tab(app, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is missing: apt-get install chromium (make test installs it where root or sudo allows)")
    from playwright.sync_api import expect, sync_playwright

    c = _client(app)
    want_sent = c.predict("A gripping, beautifully acted film.", api_name="/sentiment")["label"]
    want_sup = c.predict("I want to cancel my order", api_name="/support")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(app)
        page.get_by_role("tab", name="Sentiment").click()
        page.locator("#sentiment-input textarea").fill("A gripping, beautifully acted film.")
        page.locator("#sentiment-button").click()
        label = page.locator("#sentiment-label")
        expect(label).to_contain_text(want_sent, timeout=60_000)
        expect(page.locator("#sentiment-prompt textarea")).to_have_value(re.compile("It was"), timeout=30_000)
        expect(page.locator("#sentiment-plot svg.marks")).to_be_visible(timeout=30_000)  # the probability bars
        expect(page.locator("#sentiment-words")).to_contain_text("gripping", timeout=30_000)
        page.screenshot(path=str(tmp_path / "sentiment.png"), full_page=True)

        page.get_by_role("tab", name="Customer service").click()
        box = page.locator("#support-input textarea")
        box.fill("I want to cancel my order")
        box.press("Enter")
        chat = page.locator("#support-chat")
        expect(chat).to_contain_text(want_sup["answer"][:40], timeout=60_000)
        expect(page.locator("#support-intent")).to_contain_text(want_sup["intent"], timeout=30_000)
        # what the public types is shown as text, never run as HTML
        box.fill("<b id='injected'>bold</b><img src=x onerror=alert(1)>")
        box.press("Enter")
        expect(chat).to_contain_text("<b id='injected'>bold</b>", timeout=60_000)
        assert page.locator("#injected").count() == 0
        page.screenshot(path=str(tmp_path / "support.png"), full_page=True)

        page.get_by_role("tab", name="How it works").click()
        expect(page.locator("#how-it-works")).to_contain_text("test accuracy", timeout=30_000)
        page.screenshot(path=str(tmp_path / "how.png"), full_page=True)
        browser.close()
    for name in ("sentiment.png", "support.png", "how.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def _demo_app():
    sys.path.insert(0, str(ROOT / "demo"))
    import services as demo_app  # the models behind demo/app.py

    return demo_app


def test_slow_model_is_served_by_its_distilled_student(exports):
    demo_app = _demo_app()
    fast = demo_app.Sentiment(exports[0], warmup=(1,))  # the tiny model is well inside the 50 ms budget
    assert fast.served == "model" and fast.model_ms < demo_app.LATENCY_BUDGET_MS
    slow = demo_app.Sentiment(exports[0], warmup=(1,), latency_budget_ms=0.0)  # as if it were too slow
    assert slow.served == "student" and slow.clf.mode == "head" and slow.student_ms is not None
    rec = slow.classify(["a moving film"])[0]
    assert rec["model"] == "student" and rec["label"] in ("negative", "positive")
    text = demo_app.how_it_works(slow, None)
    assert "distilled student" in text and "this model (few-shot)" in text and "Serving the distilled student" in text


def test_an_ensemble_export_is_served_by_its_student_without_loading_it(exports, tmp_path):
    """A prompt ensemble (or decoder) export with a student: the demo serves the student and never
    loads the heavy model."""
    import json
    import shutil

    demo_app = _demo_app()
    ens = tmp_path / "export"
    shutil.copytree(exports[0], ens)
    meta = json.loads((ens / "autogpt_jax.json").read_text())
    meta["ensemble"] = {"weighting": "dev", "members": [{"dir": ".", "weight": 0.5}, {"dir": "missing", "weight": 0.5}]}
    (ens / "autogpt_jax.json").write_text(json.dumps(meta))
    (ens / "model.safetensors").unlink()  # never read
    s = demo_app.Sentiment(ens, warmup=(1,))
    assert s.served == "student" and s.model is None and s.model_ms is None and s.student_ms is not None
    assert s.classify(["a moving film"])[0]["model"] == "student"
    assert "Serving the distilled student" in demo_app.how_it_works(s, None)


def test_negative_sentiment_escalates_at_the_threshold(exports, monkeypatch):
    """The chat is flagged for a human when the sentiment model gives negative at least
    NEGATIVE_ESCALATION (85%); just under it, it is not."""
    demo_app = _demo_app()
    assert demo_app.NEGATIVE_ESCALATION == 0.85
    sent = demo_app.Sentiment(exports[0], warmup=())
    sup = demo_app.Support(exports[1], sent, warmup=())
    text = "Terrible service, I am furious"
    neg = sent.classify([text])[0]["probabilities"]["negative"]
    for threshold, want in ((neg, True), (np.nextafter(neg, 1.0), False), (0.0, True), (1.01, False)):
        monkeypatch.setattr(demo_app, "NEGATIVE_ESCALATION", float(threshold))
        rec = sup.answer([text])[0]
        assert rec["escalate"] is want, (threshold, neg)
        assert rec["sentiment"]["probabilities"]["negative"] == pytest.approx(neg)
        assert ("flagged this conversation for a human" in demo_app.chat_reply(rec)) is want
    # Without a sentiment model nothing escalates.
    assert demo_app.Support(exports[1], None, warmup=()).answer([text])[0]["escalate"] is False
    with pytest.raises(SystemExit, match="warm-up batch sizes must be among"):
        demo_app.warmup_batches("1,3")
    assert demo_app.warmup_batches("1,16") == (1, 16) and demo_app.warmup_batches("") == ()


@pytest.mark.slow
def test_space_folder_serves(exports, tmp_path):
    space = tmp_path / "space"
    p = subprocess.run([sys.executable, "scripts/build_space.py", "--sentiment-model", str(exports[0]),
                        "--support-model", str(exports[1]), "--out", str(space)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    readme = (space / "README.md").read_text()
    front = readme.split("---")[1]
    for key in ("sdk: gradio", "app_file: app.py", "python_version:"):
        assert key in front
    reqs = (space / "requirements.txt").read_text()
    assert "jax" in reqs and "gradio" in reqs and "torch" not in reqs
    for d in ("models/sentiment", "models/support", "models/support/retriever"):
        assert (space / d / "model.safetensors").is_file()
    port = _free_port()
    proc = _serve([sys.executable, "app.py", "--port", str(port)], space, tmp_path / "space.log")
    try:
        r = _client(f"http://127.0.0.1:{port}/").predict("I want to cancel my order", api_name="/support")
        _check_support(r)
        assert r["intent"] is not None
    finally:
        proc.terminate()
        proc.wait(30)
