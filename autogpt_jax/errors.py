"""Exceptions with messages written for the user: what is wrong, where, and how to fix it."""


class AutoGPTJaxError(Exception):
    """Base class: caught by the entry points and printed without a traceback."""


class ModelLoadError(AutoGPTJaxError, ValueError):
    """A checkpoint directory, its config or its weights cannot be used."""


class ModelNotFoundError(AutoGPTJaxError, FileNotFoundError):
    """``model.name_or_path`` names nothing we can find (locally, packaged, or on the hub)."""
