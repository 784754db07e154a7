"""Length buckets: sequence lengths rounded up to a few fixed sizes, so shapes (and so
compilations) stay few. A leaf module: both ``data/`` and ``models/`` use it."""

from __future__ import annotations

import numpy as np

BUCKETS = (16, 32, 64, 128, 256, 512)


def bucket_length(n: int, buckets: tuple[int, ...] = BUCKETS) -> int:
    """The smallest bucket that holds ``n`` tokens (shapes, and so compilations, stay few)."""
    for b in buckets:
        if n <= b:
            return b
    return int(np.ceil(n / buckets[-1]) * buckets[-1])
