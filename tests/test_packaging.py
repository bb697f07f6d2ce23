"""Packaging: the folder daemon/ installs as the package `calmd`, and every package folder is listed."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def import_name(folder: Path) -> str:
    """The dotted name setuptools installs a folder under, through package-dir."""
    rel = folder.relative_to(ROOT).as_posix()
    for name, src in SETUPTOOLS.get("package-dir", {}).items():
        if rel == src or rel.startswith(src + "/"):
            rel = name + rel[len(src) :]
    return rel.replace("/", ".")


def test_every_folder_with_code_or_schemas_is_a_listed_package() -> None:
    folders = {
        p.parent for top in ("calm_core", "daemon") for p in (ROOT / top).rglob("*") if p.suffix in (".py", ".json")
    }
    folders = {f for f in folders if "__pycache__" not in f.parts}
    assert {import_name(f) for f in folders} == set(SETUPTOOLS["packages"])


def test_calmd_is_the_daemon_folder_and_no_top_level_daemon_is_installed(tmp_path: Path) -> None:
    # Outside the repository, so that the folder daemon/ is not on sys.path by accident.
    code = (
        "import importlib.util, calmd;"
        "spec = importlib.util.find_spec('daemon');"
        "print(calmd.__file__); print(spec.origin if spec else None)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calmd_file, daemon_origin = proc.stdout.split()
    assert Path(calmd_file) == ROOT / "daemon" / "__init__.py"
    assert daemon_origin == "None" or not daemon_origin.startswith(str(ROOT))  # python-daemon may be installed


def test_python_m_calmd_runs_from_anywhere(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "calmd", "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: calmd"), proc.stderr


def test_schemas_ship_with_the_package() -> None:
    spec = importlib.util.find_spec("calm_core.messages")
    assert spec is not None and spec.origin is not None
    assert {p.name for p in (Path(spec.origin).parent / "schemas").glob("*.json")} >= {
        "label.schema.json",
        "event.schema.json",
        "status.schema.json",
        "call.schema.json",
    }


def test_the_daemon_s_message_modules_still_import() -> None:
    # 0.1 scripts subscribe with calmd.client and calmd.events; both now name calm_core.messages' objects.
    import calm_core.messages.client
    import calm_core.messages.events
    import calmd.client
    import calmd.events

    assert calmd.client.Subscriber is calm_core.messages.client.Subscriber
    for name in calmd.events.__all__:
        assert getattr(calmd.events, name) is getattr(calm_core.messages.events, name)
    assert {"LabelEvent", "CallEvent", "StatusEvent", "Event", "decode", "LABEL_TOPIC"} <= set(calmd.events.__all__)
