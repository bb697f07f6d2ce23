"""What head features depend on, condensed to a digest that classifiers and caches are keyed by."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

# Bytes read from each weight file: its header plus evenly spaced samples of the data.
_SAMPLES = 32
_SAMPLE_BYTES = 4096


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_digest(model_dir: str | Path) -> str:
    """Digest of a model folder's weight files without reading them whole.

    Covers every file's name and size, the safetensors header (names, shapes, dtypes,
    offsets, in canonical JSON) and 32 samples of the data spread over the file: any other checkpoint,
    quantisation or fine-tune changes it, while hashing 15 GB on every start would not
    be acceptable for a service.
    """
    model_dir = Path(model_dir)
    files = sorted(
        p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth") and p.is_file()
    )
    h = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.name}:{size}\n".encode())
        with open(path, "rb") as f:
            data_start = 0
            if path.suffix == ".safetensors" and size >= 8:
                header_len = int.from_bytes(f.read(8), "little")
                raw = f.read(min(header_len, size - 8))
                try:  # canonical form: writers order the metadata map arbitrarily
                    raw = canonical_json(json.loads(raw)).encode()
                except (json.JSONDecodeError, UnicodeDecodeError):
                    pass
                h.update(raw)
                data_start = min(size, 8 + header_len)
            span = size - data_start
            for i in range(_SAMPLES):
                f.seek(data_start + max(0, (span - _SAMPLE_BYTES) * i // (_SAMPLES - 1)))
                h.update(f.read(_SAMPLE_BYTES))
    return h.hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """Everything that changes head features: backbone adapter, model config and weights, dtype, prompt, processor."""

    components: dict[str, str]
    model_id: str = field(default="", compare=False)

    @property
    def digest(self) -> str:
        return sha256_text(canonical_json(self.components))

    def differences(self, other: Fingerprint) -> list[str]:
        keys = sorted(set(self.components) | set(other.components))
        return [k for k in keys if self.components.get(k) != other.components.get(k)]

    def to_json(self) -> dict[str, object]:
        return {"digest": self.digest, "model_id": self.model_id, "components": dict(self.components)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Fingerprint:
        components = data.get("components")
        if not isinstance(components, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in components.items()
        ):
            raise ValueError("fingerprint.components must be an object of strings")
        fp = cls(components=dict(components), model_id=str(data.get("model_id", "")))
        if data.get("digest") not in (None, fp.digest):
            raise ValueError("fingerprint.digest does not match its components (file edited or corrupt)")
        return fp


def describe_mismatch(expected: Fingerprint, actual: Fingerprint) -> str:
    parts = []
    for key in expected.differences(actual):
        a, b = expected.components.get(key, "<missing>"), actual.components.get(key, "<missing>")
        if len(a) > 40 or len(b) > 40:
            a, b = a[:12] + "…", b[:12] + "…"
        parts.append(f"{key}: classifier has {a!r}, model gives {b!r}")
    return "; ".join(parts)
