#!/bin/sh
# Wheels for bench/device.sh, into .device-wheels/ (git-ignored; carried to the GPU machine with the
# working tree, 64 MiB at most in all). That machine has torch and transformers but no pip access, and
# lacks bitsandbytes (nf4) and some of calm's small dependencies; which ones is found out there, so the
# wheels of every candidate travel, at the versions requirements/lock.txt pins, for each Python minor
# version it might run (its version is not known here).
#
#   sh scripts/device-wheels.sh [PYTHON_VERSIONS...]      # default: 3.10 3.11 3.12 3.13
set -eu
cd "$(dirname "$0")/.."
OUT=.device-wheels
PACKAGES=$(sed -e '/^#/d' -e '/^$/d' bench/device-packages.txt | cut -d' ' -f2)  # what bench/device.sh may install
VERSIONS=${*:-3.10 3.11 3.12 3.13}
PIP=${PIP:-.venv/bin/pip}
mkdir -p "$OUT"
pinned() {  # the lock's version of a package
    sed -n "s/^$1==\([^ ]*\).*/\1/p" requirements/lock.txt
}
for v in $VERSIONS; do
    for pkg in $PACKAGES; do
        version=$(pinned "$pkg")
        [ -n "$version" ] || { echo "device-wheels: $pkg is not in requirements/lock.txt" >&2; exit 1; }
        fetch() {
            "$PIP" download --quiet --no-deps --only-binary=:all: --dest "$OUT" --python-version "$v" \
                --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
                --platform manylinux_2_24_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
                "$1" 2>/dev/null
        }
        if ! fetch "$pkg==$version"; then  # the pin may need a newer Python than $v: its newest that fits
            fetch "$pkg" && echo "device-wheels: $pkg $version has no wheel for Python $v; took the newest that has"
        fi
    done
done
du -sh "$OUT"
