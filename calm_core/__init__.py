"""calm_core: few-shot audio classification with CALM on audio-language models.

A library usable without the daemon: load a backbone, extract head features, fit a
CalmClassifier, predict. See calm_core.calm for the equations.
"""

from .classifier import CalmClassifier, CalmConfig, Prediction
from .errors import AudioError, CalmError, ClassifierFileError, DatasetError, ModelLoadError

__all__ = [
    "AudioError",
    "CalmClassifier",
    "CalmConfig",
    "CalmError",
    "ClassifierFileError",
    "DatasetError",
    "ModelLoadError",
    "Prediction",
]
__version__ = "0.1.0"
