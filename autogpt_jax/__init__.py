"""autogpt_jax: few-shot task models from pretrained BERT / GPT-2 checkpoints in JAX + Flax NNX."""

from flax import config as _flax_config

# Parameters carry *logical* axis names only (``out_sharding`` metadata). They are mapped onto a
# device mesh in one place (``training/sharding.py``), never at construction time. Set as flax's
# process-wide default, not with ``nnx.use_eager_sharding(False)``: that context is per thread,
# and a model built in another thread (LangChain's async calls run in an executor) would ask for
# a mesh.
_flax_config.update("flax_always_shard_variable", False)

from autogpt_jax.version import __version__  # noqa: E402
from autogpt_jax.api import FewShotClassifier  # noqa: E402  (after the flax setting above)

__all__ = ["FewShotClassifier", "__version__"]

