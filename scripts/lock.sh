#!/usr/bin/env bash
# Refresh requirements/lock.txt: the exact versions, with their hashes, that `make test` installs.
#   bash scripts/lock.sh            resolve the newest releases the ranges in pyproject.toml allow
#   bash scripts/lock.sh --check    fail if the lock no longer matches pyproject.toml (nothing written)
# Then rebuild the venv from the new lock and run the tests before committing it:
#   rm -rf .venv && make test && git add requirements/lock.txt
# The lock is for CPython 3.11 on Linux x86_64 (these machines and the container image). torch is not
# in it: scripts/setup.sh installs the pinned build first (CPU here, CUDA where a GPU is), and the
# packages torch needs are locked through requirements/torch-runtime.in.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION="0.13.9"
tool=.lock-tool  # uv in a venv of its own, outside the project's
[ -x "$tool/bin/uv" ] || { python3 -m venv "$tool" && "$tool/bin/pip" install -q "uv==$UV_VERSION"; }

out=requirements/lock.txt
[ "${1:-}" = "--check" ] && out=$(mktemp)
"$tool/bin/uv" pip compile pyproject.toml requirements/torch-runtime.in --extra dev \
    --override requirements/overrides.txt --generate-hashes \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    ${UV_EXCLUDE_NEWER:+--exclude-newer "$UV_EXCLUDE_NEWER"} \
    --no-header --annotation-style line --quiet -o "$out"
if [ "${1:-}" = "--check" ]; then
    pinned() { grep -E '^[A-Za-z0-9_.-]+==' "$1" | sed 's/ .*//' | sort; }
    if ! diff <(pinned requirements/lock.txt) <(pinned "$out"); then
        echo "lock: requirements/lock.txt differs from a fresh resolution (lines above: < lock, > newest)" >&2
        exit 1
    fi
    echo "lock: requirements/lock.txt is what the ranges resolve to today"
fi
