#!/usr/bin/env bash
# Stand-in for python:3.11-slim-bookworm, built from Debian's packages (no container registry is reachable
# here): a minimal bookworm root with Debian's Python 3.11, pip allowed to install, python/pip on the path.
# Usage: container/base_image.sh [NAME]   (skips the build when NAME already exists)
set -euo pipefail
NAME=${1:-localhost/python-3.11-slim-bookworm-standin}
PODMAN=(podman --runtime runc --cgroup-manager=cgroupfs)
if "${PODMAN[@]}" image exists "$NAME"; then
    echo "base image $NAME: present"
    exit 0
fi
# The Debian mirror this machine's apt uses (deb822 or one-line sources).
MIRROR=$(grep -hE '^(URIs:|deb) ' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -oE 'https?://[^ ]+/debian/?$' | head -1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOT=$(mktemp -d /var/tmp/standin-rootfs.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$ROOT" "$MIRROR"
# What python:3.11-slim gives that Debian's Python does not: pip may install system-wide, python/pip on PATH.
rm -f "$ROOT"/usr/lib/python3.11/EXTERNALLY-MANAGED
ln -sf /usr/bin/python3 "$ROOT"/usr/local/bin/python
ln -sf /usr/bin/pip3 "$ROOT"/usr/local/bin/pip
# Same trims as the slim image: no apt lists, docs or man pages.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
    "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/*
tar -C "$ROOT" -c . | "${PODMAN[@]}" import \
    --change 'CMD ["python3"]' --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' - "$NAME"
echo "base image $NAME: built from $MIRROR"
