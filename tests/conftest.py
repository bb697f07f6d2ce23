import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TONE_CLASSES = {"hum": 180.0, "beep": 700.0, "whistle": 1400.0, "siren": 2600.0}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2-Audio, written once per session through the public tool."""
    from calm_core.testing import make_tiny_qwen2_audio

    return make_tiny_qwen2_audio(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def backbone(tiny_model_dir: Path):
    from calm_core.backbones import load_backbone

    return load_backbone(tiny_model_dir)


@pytest.fixture(scope="session")
def tone_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from calm_core.testing import write_tone_dataset

    root = tmp_path_factory.mktemp("tones")
    return {
        "support": write_tone_dataset(root / "support", TONE_CLASSES, per_class=5, seed=1),
        "val": write_tone_dataset(root / "val", TONE_CLASSES, per_class=3, seed=3),
        "test": write_tone_dataset(root / "test", TONE_CLASSES, per_class=5, seed=2),
    }
