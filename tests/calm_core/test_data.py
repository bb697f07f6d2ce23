"""Clip sets from folders and manifests."""

import json
from pathlib import Path

import pytest

from calm_core.audio.clipsets import label_index, load_examples
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


def test_csv_and_json_manifests_give_each_clip_its_call(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,label,call\na.wav,spoof,c1\nb.wav,spoof,c1\nc.wav,bonafide,c2\n")
    assert [e.call for e in load_examples(tmp_path / "m.csv")] == ["c1", "c1", "c2"]
    (tmp_path / "m.json").write_text(json.dumps([{"wav": "a.wav", "label": "x", "group": 7}]))
    assert load_examples(tmp_path / "m.json")[0].call == "7"
    (tmp_path / "n.csv").write_text("path,label\na.wav,x\n")
    assert load_examples(tmp_path / "n.csv")[0].call is None


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"wav": "a.wav", "label": "x", "call": "c1"}, {"wav": "b.wav", "label": "x"}], r"records 1 have no call"),
        ([{"wav": "a.wav", "label": "x", "call": ["c1"]}], r"record 0 has call = \['c1'\]; expected a string"),
        ([{"wav": "a.wav", "label": "x", "group": True}], r"record 0 has group = True"),
    ],
)
def test_bad_call_columns_name_the_record(tmp_path: Path, records: list, message: str) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(records))
    with pytest.raises(DatasetError, match=message):
        load_examples(manifest)
