#!/bin/sh
# The GPU sizing in one call on the device machine (run from the repository root):
#
#   sh bench/device.sh                     # writes $OUT/sizing.md and $OUT/sizing.json
#
# It uses the machine's own torch and transformers, installs only the imports that are missing from the
# wheels scripts/device-wheels.sh put in .device-wheels/ (carried with the working tree), makes calm
# importable without installing it, and runs bench/gpu_sizing.py within SIZING_TIMEOUT_S (default 460 s,
# so one rerun fits in the device time). The same script runs in the test suite on CPU at reduced width:
#   DEVICE=cpu SIZING_ARGS="--scale 32 --repeats 1 --streams 2 --stream-seconds 2" sh bench/device.sh
set -eu
OUT=${OUT:-/tmp/calm-sizing}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
EXTRA=$(mktemp -d /tmp/calm-extra.XXXXXX)
mkdir -p "$OUT"
ln -s "$PWD/daemon" "$EXTRA/calmd"  # the package calmd lives in daemon/ (pyproject's package-dir)
export PYTHONPATH="$EXTRA:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import sys, torch, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__,
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
missing=""
while read -r module package; do
    case "$module" in "#"* | "") continue ;; esac
    "$PY" -c "import $module" 2>/dev/null || missing="$missing $package"
done <bench/device-packages.txt
if [ -n "$missing" ]; then
    echo "device.sh: installing from .device-wheels:$missing"
    [ -d .device-wheels ] || { echo "device.sh: .device-wheels/ is missing (sh scripts/device-wheels.sh)" >&2; exit 2; }
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet --no-index --no-deps --find-links .device-wheels --target "$EXTRA" $missing
fi
# shellcheck disable=SC2086
timeout "${SIZING_TIMEOUT_S:-460}" "$PY" bench/gpu_sizing.py --device "$DEVICE" ${SIZING_ARGS:-} --out "$OUT"
