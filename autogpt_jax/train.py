"""``python -m autogpt_jax.train --data.train_file F [--data.test_file T] [--section.key value ...]``
(your own task: the packaged recipes, screened) or ``--config_path configs/<name>.yaml [...]``."""

from __future__ import annotations

import logging
import sys

import jax

from autogpt_jax.config import load_config
from autogpt_jax.errors import AutoGPTJaxError
from autogpt_jax.pipeline import run_pipeline
from autogpt_jax.report import print_report
from autogpt_jax.selection import with_default_recipe
from autogpt_jax.training.compilation import enable_cache


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        cfg = load_config(with_default_recipe(list(sys.argv[1:] if argv is None else argv)))
        enable_cache(cfg.compile_cache)
        report = run_pipeline(cfg)
    except AutoGPTJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --checkpoint.resume true to continue from the last checkpoint", file=sys.stderr)
        return 130
    if jax.process_index() == 0:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
