#!/usr/bin/env bash
# Everything calm needs on a Debian/Ubuntu machine, shared by `make demo`, `make test` and .ci/run:
# the Debian packages (installed when run as root; otherwise the exact apt-get line is printed and the
# script stops), then .venv with the pinned CPU build of torch first, every other package at the exact
# version and hash in requirements/lock.txt (what the test suite passed with; bash scripts/lock.sh
# refreshes it), and calm itself. Running it again is cheap: installed packages are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# ffmpeg: RTSP/FFmpeg decoding; gstreamer + python3-gi: a real RTSP server on 127.0.0.1;
# pulseaudio + libasound2-plugins + libportaudio2: a real capture device for the mic source;
# fluidsynth + fluid-soundfont-gm + espeak-ng: real recordings for the development set.
# tuxpaint-stamps-default ... sound-theme-freedesktop: recorded effects for the events set;
# tuxpaint's spoken descriptions + flite, festival and its voices: the spoof set (calm_core/devsets).
# python3-venv: `python3 -m venv` with Debian's own python3.
# haproxy: calls spread over two calmd through a real load balancer (tests/daemon/test_haproxy.py).
# mosquitto, openssl: a real MQTT broker, with a password file and a test CA for TLS (tests/daemon/test_mqtt.py).
# chromium + chromium-driver: the live page in a real headless browser (tests/daemon/test_page.py).
# podman + runc + debootstrap: the container image, built on a Debian base bootstrapped here and run
# (tests/container/test_podman.py); runc because crun refuses hosts with cgroup v1 beside a v2 hierarchy.
# podman-compose + the CNI dnsname plugin: compose.yaml brought up, its services finding each other by name.
DEBIAN_PACKAGES=(
    libsndfile1 ffmpeg libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins alsa-utils
    fluidsynth fluid-soundfont-gm espeak-ng
    tuxpaint-stamps-default wesnoth-1.16-data openttd-opensfx hedgewars-data sound-theme-freedesktop
    flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts festvox-ca-ona-hts
    python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good gstreamer1.0-tools systemd
    python3-venv haproxy mosquitto openssl
    chromium chromium-driver
    podman runc debootstrap podman-compose golang-github-containernetworking-plugin-dnsname
)
TORCH="torch==2.13.0"  # the CPU build on these machines; on a CUDA machine install the matching build first

missing=()
if command -v dpkg-query >/dev/null; then
    for package in "${DEBIAN_PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
        [ "$status" = "install ok installed" ] || missing+=("$package")
    done
else
    echo "setup: no dpkg here; install the equivalents of: ${DEBIAN_PACKAGES[*]}" >&2
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing ${#missing[@]} Debian package(s): ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: these Debian packages are missing; install them as root, then run this again:" >&2
        echo "sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
fi

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip=(.venv/bin/python -m pip)
"${pip[@]}" install -q --upgrade pip
# torch first, so that the range in pyproject.toml is already met and installs nothing bigger.
"${pip[@]}" install -q "$TORCH"
platform=$(.venv/bin/python -c 'import platform, sys; print(f"{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]}-{platform.system()}-{platform.machine()}")')
if [ "$platform" = "cpython3.11-Linux-x86_64" ]; then
    # Exactly what was tested: every package pinned with its hashes (--no-deps: the lock is complete,
    # and pip check below proves it), then calm itself without resolving anything again.
    "${pip[@]}" install -q --require-hashes --no-deps -r requirements/lock.txt
    "${pip[@]}" install -q --no-deps --no-build-isolation -e .
    "${pip[@]}" check
else
    echo "setup: requirements/lock.txt is for cpython3.11-Linux-x86_64, this is $platform:" \
        "installing the newest releases pyproject.toml allows instead (untested combinations may break)" >&2
    "${pip[@]}" install -q -e ".[dev]"
fi
echo "setup: ready (.venv: $(.venv/bin/python -c 'import torch, calm_core, calmd; print("torch", torch.__version__)'))"
