"""Errors that name the input, what was wrong with it and what is allowed."""


class CalmError(Exception):
    """Base class of every error calm raises on purpose."""


class AudioError(CalmError, ValueError):
    """An audio clip or file that cannot be classified."""


class ModelLoadError(CalmError, OSError):
    """Model weights or processor files that cannot be found or read."""


class ClassifierFileError(CalmError, ValueError):
    """A classifier file that is malformed, from another format version, or built on other features."""


class DatasetError(CalmError, ValueError):
    """A support, validation or evaluation set that cannot be used."""
