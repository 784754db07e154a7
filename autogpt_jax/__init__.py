"""autogpt_jax: few-shot task models from pretrained BERT / GPT-2 checkpoints in JAX + Flax NNX."""

from flax import nnx as _nnx

# Parameters carry *logical* axis names only (``out_sharding`` metadata). They are mapped onto a
# device mesh in one place (``training/sharding.py``), never at construction time.
_nnx.use_eager_sharding(False)

__version__ = "0.1.0"
