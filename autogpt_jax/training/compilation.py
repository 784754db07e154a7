"""Compilation: JAX's persistent compilation cache, and a clock for the seconds spent compiling.

On a CPU most of a short fine-tuning run used to be compilation (a 30-layer decoder's train step
took 80 s to compile and 3-4 s to run). Executables that an earlier process compiled are read
back from the cache directory instead: ``$AUTOGPT_JAX_CACHE/xla`` (the package cache, default
``~/.cache/autogpt_jax``), or ``JAX_COMPILATION_CACHE_DIR`` when that is set (the test suite
gives each session its own). ``--compile_cache false`` (train), ``--no_compile_cache`` (predict,
the demo) or ``AUTOGPT_JAX_COMPILE_CACHE=0`` turn it off.

:func:`compile_seconds` is a running total of tracing, lowering and XLA compilation (cache reads
included) in this process, from JAX's own monitoring events; stages report the difference
across their work as ``compile_s``, apart from the steps.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import jax
from jax import monitoring
from jax.experimental.compilation_cache.compilation_cache import reset_cache

from autogpt_jax import packages

log = logging.getLogger(__name__)

ENV_OFF = "AUTOGPT_JAX_COMPILE_CACHE"
# The help of the command-line switches that turn the cache off (predict, the demo).
OFF_HELP = f"compile without JAX's persistent cache ($AUTOGPT_JAX_CACHE/xla; env {ENV_OFF}=0)"
_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
           "/jax/core/compile/backend_compile_duration")
_lock = threading.Lock()
_total = [0.0]
_state: dict[str, object] = {"listening": False, "dir": None}


def default_cache_dir() -> Path:
    return Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or packages.cache_dir() / "xla")


def _off() -> None:
    jax.config.update("jax_enable_compilation_cache", False)
    reset_cache()
    _state["dir"] = None


def enable_cache(enabled: bool = True, directory: str | os.PathLike | None = None, *,
                 min_compile_s: float = 0.1) -> Path | None:
    """Turn JAX's persistent compilation cache on (in ``directory``, default
    :func:`default_cache_dir`) or off; returns the directory in use. Executables that took at
    least ``min_compile_s`` to compile are kept (a tenth of a second: tiny models' eval steps are
    worth keeping too; JAX's default is a second)."""
    listen()
    if not enabled or os.environ.get(ENV_OFF, "1").lower() in ("0", "false", "no", "off"):
        return _off()
    d = Path(directory) if directory is not None else default_cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only home: run without the cache rather than fail
        log.warning("compilation cache %s is not writable (%s); compiling without it", d, e)
        return _off()
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(d))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_s)
    reset_cache()  # a directory set after the first compilation takes effect too
    _state["dir"] = d
    return d


def cache_dir() -> Path | None:
    """The directory :func:`enable_cache` set (None: off or never enabled)."""
    return _state["dir"]  # type: ignore[return-value]


def _on_duration(event: str, duration: float, **_):
    if event in _EVENTS:
        with _lock:
            _total[0] += duration


def listen() -> None:
    """Start counting compile seconds (idempotent; :func:`compile_seconds` calls it)."""
    if not _state["listening"]:
        monitoring.register_event_duration_secs_listener(_on_duration)
        _state["listening"] = True


def compile_seconds() -> float:
    """Seconds this process has spent tracing, lowering and compiling (cache reads included) since
    the clock started."""
    listen()
    with _lock:
        return _total[0]
