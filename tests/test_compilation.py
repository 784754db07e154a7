"""The persistent compilation cache: a second process reads the executables the first one wrote,
the off switch leaves the directory alone, and the compile clock counts compiling only."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from autogpt_jax.training import compilation
from conftest import xla_env

PROGRAM = """
import sys
from jax import monitoring
from autogpt_jax.training import compilation
hits = []
monitoring.register_event_listener(lambda e, **k: hits.append(e) if e == "/jax/compilation_cache/cache_hits" else None)
print("dir", compilation.enable_cache(True, sys.argv[1], min_compile_s=0.0))
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * 3.0 + jnp.cumsum(x, axis=0).max())
f(jnp.ones((96, 80))).block_until_ready()
print("hits", len(hits), "compile_s", round(compilation.compile_seconds(), 3))
"""


def _run(cache):
    env = xla_env(1)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", PROGRAM, str(cache)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-2000:]
    words = out.stdout.split()
    return words[1], int(words[words.index("hits") + 1]), float(words[-1])


def test_a_second_process_reads_the_executables_of_the_first(tmp_path):
    cache = tmp_path / "xla"
    d, hits, first = _run(cache)
    assert d == str(cache) and hits == 0 and first > 0
    written = sorted(os.listdir(cache))
    assert written  # the executable is on disk
    # The second process: the same program read back.
    d, hits, again = _run(cache)
    assert hits >= 1 and sorted(os.listdir(cache)) == written


def test_the_off_switch_neither_reads_nor_writes(tmp_path, monkeypatch):
    before = jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache
    monkeypatch.setenv(compilation.ENV_OFF, "0")
    try:
        assert compilation.enable_cache(True, tmp_path / "off") is None and compilation.cache_dir() is None
        assert not jax.config.jax_enable_compilation_cache
        jax.jit(lambda x: jnp.cos(x) * 4.0 - 0.5)(jnp.arange(5.0)).block_until_ready()
        assert not (tmp_path / "off").exists()
    finally:
        monkeypatch.delenv(compilation.ENV_OFF)
        compilation.enable_cache(before[1], before[0])


def test_the_compile_clock_counts_compiling_not_running():
    f = jax.jit(lambda x: jnp.sin(x) * 2.0 + 1.5)
    x = jnp.arange(7.0)
    c0 = compilation.compile_seconds()
    f(x).block_until_ready()
    c1 = compilation.compile_seconds()
    for _ in range(20):
        f(x).block_until_ready()
    assert c1 > c0 and compilation.compile_seconds() == c1
