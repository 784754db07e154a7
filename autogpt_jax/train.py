"""``python -m autogpt_jax.train``: the pipeline entry point.

The stages (pretrain, prompt, adapt, finetune, evaluate, export) are not built yet; until they
are, this says so plainly instead of failing with a traceback.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "autogpt_jax: the training pipeline is not built yet.\n"
        "Available today: the Flax NNX BERT / GPT-2 models with Hugging Face weights in and out\n"
        "(autogpt_jax.models.load_model / save_pretrained), tested by `make test`,\n"
        "and the forward-speed benchmark `make bench`.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
