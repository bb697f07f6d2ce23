#!/usr/bin/env bash
# Upstream drift, seen early: a throwaway venv with the newest releases pyproject.toml allows (not the
# lock), then the backbone and daemon tests. Prints each package whose newest release differs from the
# lock and the tests that fail with them. For refreshing the lock (scripts/lock.sh); not part of CI.
#   make check-latest            (or: bash scripts/check-latest.sh [pytest args...])
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${CALM_LATEST_VENV:-/tmp/calm-check-latest}
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "torch==2.13.0"  # the pin scripts/setup.sh installs
"$venv/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]"

echo "== newest allowed releases that differ from requirements/lock.txt =="
"$venv/bin/python" - <<'PY'
import re
from importlib import metadata
from pathlib import Path

locked = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^ \\]+)", Path("requirements/lock.txt").read_text(), re.M))
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {norm(k): v for k, v in locked.items()}
changed = 0
for dist in sorted(metadata.distributions(), key=lambda d: norm(d.metadata["Name"])):
    name = norm(dist.metadata["Name"])
    if name in locked and locked[name] != dist.version:
        print(f"  {name:28s} lock {locked[name]:12s} newest {dist.version}")
        changed += 1
print(f"  ({changed} package(s) differ)" if changed else "  none: the lock is current")
PY

echo "== backbone and daemon tests on the newest releases =="
tests=(tests/calm_core/test_qwen2_audio.py tests/calm_core/test_qwen_omni.py tests/calm_core/test_qwen3_omni.py
       tests/calm_core/test_audioflamingo3.py tests/calm_core/test_voxtral.py tests/calm_core/test_granite_speech.py
       tests/calm_core/test_whisper.py tests/calm_core/test_speed.py tests/daemon)
set +e
HF_HUB_OFFLINE=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider "${@:-${tests[@]}}" 2>&1 | tee "$venv/pytest.log" | tail -n 25
status=${PIPESTATUS[0]}
set -e
if [ "$status" -eq 0 ]; then
    echo "check-latest: calm passes on the newest allowed releases; bash scripts/lock.sh can take them"
else
    echo "check-latest: calm FAILS on the newest allowed releases (log: $venv/pytest.log); keep the lock" >&2
fi
exit "$status"
