"""Real processes: SIGKILL mid-run then resume; two jax.distributed processes against one."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import xla_env

from autogpt_jax.models.weights import read_weights

CONFIG = "tests/configs/tiny_pretrain.yaml"
pytestmark = pytest.mark.slow  # real training processes


def _env(devices: int) -> dict:
    env = xla_env(devices)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _train(out: Path, *extra: str, devices: int = 2, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "autogpt_jax.train", "--config_path", CONFIG, "--output_dir", str(out), *extra]
    return subprocess.Popen(cmd, env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def _losses(out: Path) -> dict[int, float]:
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if "loss" in r]
    assert len(steps) == len(set(steps)), f"duplicate steps in metrics.jsonl: {steps}"
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def _finish(p: subprocess.Popen, timeout=300) -> str:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]
    return out


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    common = ("--stages", "pretrain,export", "--pretrain.steps", "30", "--checkpoint.every", "5")
    full = tmp_path / "full"
    ref = _train(full, *common)
    cut = tmp_path / "cut"
    victim = _train(cut, *common, "--checkpoint.async_save", "false")
    ck = cut / "checkpoints" / "pretrain"
    deadline = time.time() + 240
    while time.time() < deadline and not (ck / "15").is_dir():
        time.sleep(0.05)
    assert (ck / "15").is_dir(), "no checkpoint appeared"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    _finish(ref)
    done_before = max(_losses(cut))
    assert done_before < 30
    resumed = _finish(_train(cut, *common, "--checkpoint.resume", "true"))
    assert "resumed from step" in resumed
    full_l, cut_l = _losses(full), _losses(cut)
    assert sorted(cut_l) == list(range(1, 31))  # metrics continue from the right step, none twice
    np.testing.assert_allclose([cut_l[s] for s in range(1, 31)], [full_l[s] for s in range(1, 31)], rtol=1e-5)
    a, _ = read_weights(full / "export")
    b, _ = read_weights(cut / "export")
    assert a.keys() == b.keys()
    assert max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in a) < 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    common = ("--pretrain.steps", "6", "--pretrain.eval_every", "3", "--mesh.data", "2", "--mesh.fsdp", "2")
    single = _train(tmp_path / "single", *common, devices=4)
    port = _free_port()
    multi = tmp_path / "multi"
    procs = [_train(multi, *common, "--mesh.coordinator_address", f"127.0.0.1:{port}", "--mesh.num_processes", "2",
                    "--mesh.process_id", str(i), devices=2) for i in range(2)]
    outs = [_finish(p) for p in procs]
    _finish(single)
    assert "2 processes" in (multi / "report.json").read_text().replace('"processes": 2', "2 processes")
    s, m = _losses(tmp_path / "single"), _losses(multi)
    assert sorted(s) == sorted(m) == list(range(1, 7))
    np.testing.assert_allclose([m[k] for k in sorted(m)], [s[k] for k in sorted(s)], rtol=1e-5)
    assert outs[1].count("pretrain (mlm)") == 0  # only process 0 prints the report
