"""`calm models` on tiny models in given folders and in a real Hugging Face cache layout."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from calm_core.backbones import ADAPTERS
from calm_core.testing import make_tiny_audioflamingo3


def add_to_hf_cache(hub: Path, repo_id: str, files: dict[str, bytes], revision: str = "0" * 40) -> Path:
    """Files as huggingface_hub stores them: content-addressed blobs, a snapshot of symlinks, refs/main."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("../..") / "blobs" / blob.name)
    return snapshot


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def homes(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models-command")
    local = root / "local"
    make_tiny_audioflamingo3(local / "af3")
    (local / "not-a-model").mkdir()
    hub = root / "hf" / "hub"
    add_to_hf_cache(hub, "tiny/qwen2-audio", folder_files(tiny_model_dir))
    # An interrupted download: the index names two shards, one is there.
    partial = folder_files(tiny_model_dir)
    partial["model-00001-of-00002.safetensors"] = partial.pop("model.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    partial["model.safetensors.index.json"] = json.dumps(index).encode()
    add_to_hf_cache(hub, "tiny/partial", partial)
    add_to_hf_cache(hub, "other/bert", {"config.json": b'{"model_type": "bert"}'})
    return {"local": local, "hf_home": root / "hf", "xdg": root / "xdg"}


def run_models(homes: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HOME": str(homes["hf_home"]), "XDG_CACHE_HOME": str(homes["xdg"]), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-m", "calm_core.cli", "-q", "models", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_json_lists_families_heads_and_usable_folders(homes: dict[str, Path]) -> None:
    proc = run_models(homes, "--json", "--path", str(homes["local"]))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {f["model_type"] for f in result["families"]} == set(ADAPTERS)
    by_id = {m["model_id"] or Path(m["path"]).name: m for m in result["models"]}
    assert set(by_id) == {"af3", "tiny/qwen2-audio", "tiny/partial"}  # bert has no adapter
    af3 = by_id["af3"]
    assert (af3["model_type"], af3["source"], af3["layers"], af3["heads"], af3["head_dim"]) == (
        "audioflamingo3", "path", 4, 4, 16,
    )  # fmt: skip
    assert af3["adapter"] == "audioflamingo3.AudioFlamingo3Backbone" and af3["usable"]
    qwen = by_id["tiny/qwen2-audio"]
    assert qwen["source"] == "hf-cache" and qwen["usable"] and (qwen["layers"], qwen["heads"]) == (4, 4)
    partial = by_id["tiny/partial"]
    assert not partial["usable"] and partial["problem"].startswith("1 of 2 weight shards missing")


def test_a_listed_cache_entry_loads_by_its_hub_id(homes: dict[str, Path]) -> None:
    code = (
        "from calm_core.backbones import load_backbone; b = load_backbone('tiny/qwen2-audio'); "
        "print(b.layout.n_layers, b.layout.n_heads)"
    )
    env = {**os.environ, "HF_HOME": str(homes["hf_home"]), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["4", "4"]


def test_text_output_names_each_folder_and_why_one_is_unusable(homes: dict[str, Path]) -> None:
    proc = run_models(homes, "--path", str(homes["local"] / "af3"))
    assert proc.returncode == 0, proc.stderr
    assert "audioflamingo3, 4 layers x 4 heads, path] usable" in proc.stdout
    assert "tiny/qwen2-audio  [qwen2_audio, 4 layers x 4 heads, hf-cache] usable" in proc.stdout
    assert "tiny/partial" in proc.stdout and "NOT usable: 1 of 2 weight shards missing" in proc.stdout
    assert "(1 other model folders have no calm adapter)" in proc.stdout


def test_calm_cache_entries_are_named_as_bundled_models(homes: dict[str, Path], tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    shutil.copytree(homes["local"] / "af3", xdg / "calm" / "models" / "af3-copy")
    proc = run_models({**homes, "xdg": xdg}, "--json")
    entry = next(m for m in json.loads(proc.stdout)["models"] if m["source"] == "calm-cache")
    assert entry["model_id"] == "bundled:af3-copy" and entry["usable"]


def test_a_missing_path_is_an_error_that_names_it(homes: dict[str, Path], tmp_path: Path) -> None:
    proc = run_models(homes, "--path", str(tmp_path / "absent"))
    assert proc.returncode == 2
    assert f"{tmp_path / 'absent'}: no such folder" in proc.stderr
