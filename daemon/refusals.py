"""How the page refuses a request (Refused: a status and a message naming what was asked and why), and which
files of the clips folder it serves. Shared by the page's server and API and by the review, which refuse
through the same path."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import unquote

CLIP_TYPES = {  # what the clips folder holds; anything else there is not served
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".opus": "audio/ogg",  # Opus in an Ogg container
    ".ogg": "audio/ogg",
    ".mp3": "audio/mpeg",
    ".json": "application/json",  # a clip's sidecar
    ".png": "image/png",  # a clip's spectrogram
}


class Refused(Exception):
    """A request answered with an error status; the message names what was asked and why."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def clip_path(root: Path, url_path: str) -> Path:
    """The file under root that /clips/<url_path> names; Refused for anything outside root or not a clip."""
    rel = unquote(url_path)
    parts = PurePosixPath(rel).parts
    if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/") or any(p in ("..", ".") for p in parts):
        raise Refused(403, f"clip path {rel!r}: must be a plain path inside the clips folder")
    base = root.resolve()
    target = (base / rel).resolve()  # follows symbolic links: one pointing outside is refused below
    if not target.is_relative_to(base):
        raise Refused(403, f"clip path {rel!r}: resolves outside the clips folder")
    if target.suffix.lower() not in CLIP_TYPES:
        raise Refused(404, f"clip path {rel!r}: not a clip (served: {', '.join(sorted(CLIP_TYPES))})")
    if not target.is_file():
        raise Refused(404, f"clip {rel!r}: no such file in the clips folder")
    return target
