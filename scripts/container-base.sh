#!/usr/bin/env bash
# The Debian base image the Containerfile builds on, made locally: debootstrap Debian 12 (minbase) from
# the Debian mirror this machine's apt already uses, then `podman import` the folder. Needed where no
# container registry is reachable; elsewhere `debian:bookworm-slim` from a registry does as well
# (podman build --build-arg BASE=docker.io/library/debian:bookworm-slim).
#   bash scripts/container-base.sh        make localhost/calm-debian:bookworm unless it exists
# Environment: CALM_BASE_IMAGE (the image name), DEBIAN_MIRROR (default: the first Debian mirror in
# /etc/apt/sources.list*, else http://deb.debian.org/debian). Needs root, podman and debootstrap.
set -euo pipefail

image="${CALM_BASE_IMAGE:-localhost/calm-debian:bookworm}"
suite=bookworm

if podman image exists "$image"; then
    echo "container-base: $image exists"
    exit 0
fi
for tool in podman debootstrap; do
    command -v "$tool" >/dev/null || { echo "container-base: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done

# The mirror apt uses here: one-line (deb URL suite ...) or deb822 (URIs: URL) sources; the security
# archive is a separate line below.
mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -v '^[[:space:]]*#' |
        grep -oE '(https?|file)://[^ ]*/debian/?([[:space:]]|$)' | head -n 1 | tr -d '[:space:]' || true)
fi
mirror="${mirror:-http://deb.debian.org/debian}"
mirror="${mirror%/}"
security="${mirror%/debian}/debian-security"

rootfs=$(mktemp -d /var/tmp/calm-debian.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "container-base: debootstrap $suite from $mirror into $rootfs"
debootstrap --variant=minbase --include=ca-certificates "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -n 30 "$rootfs.log" >&2
    exit 1
}
rm -f "$rootfs.log"

cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
# What debian:*-slim does: no documentation or apt caches in the image.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-container" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
EOF
cat >"$rootfs/etc/apt/apt.conf.d/01-container" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/*/[!c]*
: >"$rootfs/etc/machine-id"

tar --numeric-owner -C "$rootfs" -c . |
    podman import --quiet --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$image" >/dev/null
echo "container-base: made $image ($(podman image inspect --format '{{.Size}}' "$image") bytes)"
