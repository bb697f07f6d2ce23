"""No code path deserialises pickles, runs a shell or imports a module named by configuration."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("calm_core", "daemon") for p in (ROOT / d).rglob("*.py"))

FORBIDDEN = {
    r"\bimport pickle\b|\bpickle\.load": "pickle",
    r"torch\.load\((?![^)]*weights_only=True)": "torch.load without weights_only=True",
    r"shell\s*=\s*True": "shell=True",
    r"(?<![.\w])(eval|exec)\(": "eval/exec",
    r"importlib\.import_module|__import__\(": "dynamic import",
    r"trust_remote_code\s*=\s*True": "trust_remote_code",
}


def test_sources_were_found() -> None:
    assert len(SOURCES) > 20


def test_no_unsafe_deserialisation_shell_or_dynamic_import() -> None:
    hits = []
    for path in SOURCES:
        text = path.read_text()
        for pattern, what in FORBIDDEN.items():
            for m in re.finditer(pattern, text):
                line = text.count("\n", 0, m.start()) + 1
                hits.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert hits == []


def test_loaders_use_safetensors_only() -> None:
    text = "".join(p.read_text() for p in SOURCES)
    assert "safetensors" in text and "torch.load(" not in text
