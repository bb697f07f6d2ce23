"""Clip sets from folders and manifests."""

import json
from pathlib import Path

import pytest

from calm_core.data import label_index, load_examples
from calm_core.errors import DatasetError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_per_class(tmp_path: Path) -> None:
    touch(tmp_path / "dog" / "a.wav")
    touch(tmp_path / "cat" / "sub" / "b.flac")
    touch(tmp_path / "cat" / "notes.txt")
    ex = load_examples(tmp_path)
    assert [(e.path.name, e.label) for e in ex] == [("b.flac", "cat"), ("a.wav", "dog")]
    assert label_index(ex) == (["cat", "dog"], [0, 1])


def test_reference_json_manifest_with_relative_paths(tmp_path: Path) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text(
        json.dumps([{"wav": "clips/1.wav", "mapped_label": "spoof"}, {"wav": "/abs/2.wav", "mapped_label": "bonafide"}])
    )
    ex = load_examples(manifest)
    assert ex[0].path == tmp_path / "clips" / "1.wav" and ex[0].label == "spoof"
    assert str(ex[1].path) == "/abs/2.wav"


def test_csv_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.wav,x\nb.wav,y\n")
    assert [e.label for e in load_examples(manifest)] == ["x", "y"]


@pytest.mark.parametrize(
    "content, message",
    [("{", "not valid JSON"), ('{"wav": 1}', "JSON list"), ('[{"file": "a.wav"}]', "needs a path")],
)
def test_bad_manifests(tmp_path: Path, content: str, message: str) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_examples(manifest)


def test_flat_folder_and_unknown_labels(tmp_path: Path) -> None:
    touch(tmp_path / "a.wav")
    with pytest.raises(DatasetError, match="one sub-folder per class"):
        load_examples(tmp_path)
    with pytest.raises(DatasetError, match=r"\['zebra'\] are not classes"):
        label_index(load_examples(touch(tmp_path / "d" / "zebra" / "z.wav").parent.parent), ["cat", "dog"])
