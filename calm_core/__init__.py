"""calm_core: few-shot audio classification with CALM on audio-language models.

A library usable without the daemon: load a backbone, extract head features, fit a
CalmClassifier, predict. See calm_core.method.calm for the equations.

The packages, from the bottom up: audio (decoding and every step before the model), backbones (the
model families, stopped at the exit layer), features (head features and their cache), method (CALM, the
classifier and its file), evaluation, messages (calmd's wire format), cli; devsets and testing build
development sets and tiny models.
"""

from typing import TYPE_CHECKING, Any

from .errors import AudioError, CalmError, ClassifierFileError, DatasetError, ModelLoadError

if TYPE_CHECKING:
    from .method.classifier import CalmClassifier, CalmConfig, Prediction

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
_CLASSIFIER = ("CalmClassifier", "CalmConfig", "Prediction")


def __getattr__(name: str) -> Any:
    # The classifier brings torch: loaded on first use, so that calm_core.messages (what calm-mqtt,
    # calm-proxy and subscribers import) and `calm --help` stay light.
    if name in _CLASSIFIER:
        from .method import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'calm_core' has no attribute {name!r}")
