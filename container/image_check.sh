#!/usr/bin/env bash
# `make image-check`: build container/Dockerfile with podman and run the image as SageMaker runs it.
#
# From a fresh clone on a Debian machine, as root: installs podman, runc and debootstrap; builds a stand-in for
# python:3.11-slim-bookworm (container/base_image.sh, cached); builds the Dockerfile with only build arguments
# differing (the base image and where torch comes from); packages the demo artifacts; then, for each of the
# vendor's packages (and H1 again as AOTInductor packages), runs the image with the command `serve`, the artifact
# read-only at /opt/ml/model, the image's own user, a read-only root with a tmpfs at /tmp, all capabilities
# dropped and no network, and checks it from inside its network namespace (container/probe.py: /ping, the vendor
# payloads, a bad input's 4xx, `kit smoke`, a slide). Last, SIGTERM: exit 0 within the grace period. Then `train`
# (the cohort worker) as a training job runs it, on a small cohort, twice.
#
# Environment: IMAGE_CHECK_TORCH_INDEX (default PyPI's, https://pypi.org/simple), IMAGE_CHECK_IMAGE,
# IMAGE_CHECK_BASE, IMAGE_CHECK_GRACE_S (default 30, the server's GRACEFUL_TIMEOUT_S).
set -euo pipefail
{ # bash reads this block whole before running it, so editing the file meanwhile cannot derail a run
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-$REPO/.venv/bin/python}
IMAGE=${IMAGE_CHECK_IMAGE:-localhost/optimus-serving:check}
BASE=${IMAGE_CHECK_BASE:-localhost/python-3.11-slim-bookworm-standin}
TORCH_INDEX=${IMAGE_CHECK_TORCH_INDEX:-https://pypi.org/simple}
GRACE_S=${IMAGE_CHECK_GRACE_S:-30}
WORK=$REPO/build/image-check
PODMAN=(podman --runtime runc --cgroup-manager=cgroupfs)
began=$(date +%s)
step() { printf '\n[image-check %4ds] %s\n' $(($(date +%s) - began)) "$*"; }

step "tools: podman, runc, debootstrap"
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# This machine refuses to raise RLIMIT_NOFILE, which podman does by default (see DESIGN.md).
if ! grep -qs '^default_ulimits' /etc/containers/containers.conf; then
    mkdir -p /etc/containers
    if grep -qs '^\[containers\]' /etc/containers/containers.conf; then
        sed -i 's/^\[containers\]/[containers]\ndefault_ulimits = []/' /etc/containers/containers.conf
    else
        printf '[containers]\ndefault_ulimits = []\n' >>/etc/containers/containers.conf
    fi
fi

step "base image: $BASE"
container/base_image.sh "$BASE"

step "build $IMAGE (torch from $TORCH_INDEX)"
# pip inside the build trusts the host's CA bundle and pip.conf (this machine's network needs them).
mounts=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
[[ -f /etc/pip.conf ]] && mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
previous=$("${PODMAN[@]}" image inspect "$IMAGE" --format '{{.Id}}' 2>/dev/null || true)
build_began=$(date +%s)
"${PODMAN[@]}" build --pull=never --network host "${mounts[@]}" \
    --build-arg BASE_IMAGE="$BASE" --build-arg TORCH_INDEX_URL="$TORCH_INDEX" \
    -f container/Dockerfile -t "$IMAGE" .
echo "build: $(($(date +%s) - build_began)) s"
# A rebuild leaves the previous image untagged (6 GB): remove it.
if [[ -n $previous && $previous != $("${PODMAN[@]}" image inspect "$IMAGE" --format '{{.Id}}') ]]; then
    "${PODMAN[@]}" rmi "$previous" >/dev/null 2>&1 || true
fi
"${PODMAN[@]}" image inspect "$IMAGE" --format 'image size: {{.Size}} bytes' |
    awk '{printf "image size: %.2f GB (%s bytes)\n", $3 / 1e9, $3}'
echo "biggest layers:"
"${PODMAN[@]}" history --format json "$IMAGE" | "$PY" -c '
import json, sys
for layer in sorted(json.load(sys.stdin), key=lambda layer: -layer["size"])[:4]:
    print("  %8.1f MB  %s" % (layer["size"] / 1e6, layer["CreatedBy"][:100]))'

# Three runs: H1 takes its port from SAGEMAKER_BIND_TO_PORT, M the default 8080, and H1 again with its models
# compiled as AOTInductor packages (the vendor's .pt2 format: loaded without triton, unpacked under /tmp).
RUNS=(H1 M H1-aoti)
declare -A PACKAGE=([H1]=H1 [M]=M [H1-aoti]=H1)
declare -A FORMAT=([H1]=native [M]=native [H1-aoti]=aoti)
declare -A PORT=([H1]=9081 [M]=8080 [H1-aoti]=8080)
declare -A MODELS=([H1]=h1,tissue-seg [M]=m-optimus,tissue-seg)

step "demo artifacts, unpacked from model.tar.gz as SageMaker does into /opt/ml/model"
for run in "${RUNS[@]}"; do
    # Packaged again when the kit or the model code changed since.
    [[ -f $WORK/$run/model.tar.gz && -z $(find kit model_code -name "*.py" -newer "$WORK/$run/model.tar.gz" | head -1) ]] ||
        PYTHONPATH=$REPO "$PY" -m kit package --demo --format "${FORMAT[$run]}" \
        --models "${MODELS[${PACKAGE[$run]}]}" --out "$WORK/$run"
    rm -rf "$WORK/$run/opt-ml-model" && mkdir "$WORK/$run/opt-ml-model"
    tar -C "$WORK/$run/opt-ml-model" -xzf "$WORK/$run/model.tar.gz"
done

failed=0
for run in "${RUNS[@]}"; do
    name=image-check-${run,,}
    port=${PORT[$run]}
    env=(-e SAGEMAKER_HOSTED=1)  # as the CDK stack sets it: on SageMaker, IAM guards the routes (no token warning)
    [[ $port != 8080 ]] && env+=(-e SAGEMAKER_BIND_TO_PORT="$port")
    step "run $run (${FORMAT[$run]} models): serve on port $port, --network none, read-only root"
    "${PODMAN[@]}" rm -f "$name" >/dev/null 2>&1 || true
    started=$(date +%s.%N)
    "${PODMAN[@]}" run -d --name "$name" --network none --read-only --read-only-tmpfs=false \
        --tmpfs /tmp:rw,nosuid,nodev,exec,size=2g --cap-drop all --security-opt no-new-privileges \
        -v "$WORK/$run/opt-ml-model:/opt/ml/model:ro" "${env[@]}" "$IMAGE" serve >/dev/null
    pid=$("${PODMAN[@]}" inspect "$name" --format '{{.State.Pid}}')
    # The checks run on this machine's tools, inside the container's network namespace: only its loopback.
    if nsenter --net="/proc/$pid/ns/net" env PYTHONPATH="$REPO" "$PY" container/probe.py \
        --url "http://127.0.0.1:$port" --package "${PACKAGE[$run]}" --started "$started" --pid "$pid" \
        --payloads "${VENDOR_PAYLOADS:-$REPO/../shared/fixtures/vendor-payloads}"; then
        :
    else
        failed=1
    fi
    user=$("${PODMAN[@]}" exec "$name" id -un)
    echo "runs as: $user; written under /tmp: $("${PODMAN[@]}" exec "$name" du -sh /tmp | cut -f1)"
    [[ $user != root ]] || { echo "FAIL: the server runs as root"; failed=1; }
    stopping=$(date +%s.%N)
    "${PODMAN[@]}" kill --signal TERM "$name" >/dev/null
    code=$(timeout "$GRACE_S" "${PODMAN[@]}" wait "$name" || echo timeout)
    took=$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $stopping}")
    echo "SIGTERM: exit $code after ${took} s (grace ${GRACE_S} s)"
    [[ $code == 0 ]] || { echo "FAIL: no clean exit within the grace period"; failed=1; }
    if "${PODMAN[@]}" logs "$name" 2>&1 | grep -E 'Traceback|Read-only file system|Permission denied|WARNING'; then
        echo "FAIL: the server's log above shows errors or warnings"
        failed=1
    fi
    "${PODMAN[@]}" rm -f "$name" >/dev/null
done

# The cohort worker as a training job runs it: `train`, /opt/ml writable by the image's user (checkpoints, scratch)
# with the channels and config read-only over it, no network; twice, the second run finding everything done.
step "train: the cohort worker on a small cohort (two slides and a truncated one), then again"
TRAIN=$WORK/train
rm -rf "$TRAIN" && mkdir -p "$TRAIN"
PYTHONPATH=$REPO "$PY" -c '
import sys; from pathlib import Path
from kit.cohorts.local_job import write_job
from kit.slides.synthetic import make_slide
work = Path(sys.argv[1])
make_slide(work / "slides/a.svs", 0.5); make_slide(work / "slides/sub/b.svs", 0.25, origin_px=(300, 200))
(work / "slides/bad.svs").write_bytes((work / "slides/a.svs").read_bytes()[:20000])
write_job(work / "ml", "algo-1", ["algo-1"], {"model": "h1"}, Path(sys.argv[2]), work / "slides")' \
    "$TRAIN" "$WORK/H1/opt-ml-model"
chown -R 1000:1000 "$TRAIN/ml/checkpoints" "$TRAIN/ml/output" && chown 1000:1000 "$TRAIN/ml"
for round in 1 2; do
    "${PODMAN[@]}" rm -f image-check-train >/dev/null 2>&1 || true
    code=0
    "${PODMAN[@]}" run --name image-check-train --network none --read-only --read-only-tmpfs=false \
        --tmpfs /tmp:rw,nosuid,nodev,exec,size=1g --cap-drop all --security-opt no-new-privileges \
        -v "$TRAIN/ml:/opt/ml" -v "$TRAIN/ml/input:/opt/ml/input:ro" "$IMAGE" train >"$TRAIN/log-$round" 2>&1 || code=$?
    grep -E '^cohort-progress:' "$TRAIN/log-$round" | tail -1
    echo "train round $round: exit $code"
    [[ $code == 0 ]] || { tail -20 "$TRAIN/log-$round"; echo "FAIL: train exited $code"; failed=1; }
    if grep -E 'Traceback|Read-only file system|Permission denied' "$TRAIN/log-$round"; then
        echo "FAIL: the worker's log above shows errors"; failed=1
    fi
done
"${PODMAN[@]}" rm -f image-check-train >/dev/null 2>&1 || true
"$PY" - "$TRAIN/ml" <<'PYCHECK' || failed=1
import json, sys
from pathlib import Path
import h5py
root = Path(sys.argv[1])
rows = [json.loads(line) for line in (root / "checkpoints/status/algo-1.jsonl").read_text().splitlines()]
print("status lines:", [(row["slide"], row["status"], row["tiles"]) for row in rows])
last = {row["slide"]: row["status"] for row in rows}
assert last == {"a.svs": "done", "sub/b.svs": "done", "bad.svs": "failed"}, last
assert [row["slide"] for row in rows if row["status"] == "done"] in (["a.svs", "sub/b.svs"], ["sub/b.svs", "a.svs"]), \
    "the second run made a finished slide again"
for name in ("a.h5", "sub/b.h5"):
    with h5py.File(root / "checkpoints" / name) as features:
        assert features["features"].shape[0] == features.attrs["tiles"] > 0, name
assert not list((root / "scratch").rglob("*.*")) and not (root / "output/failure").exists()
print("train: features files and status lines as expected")
PYCHECK

step "image check $([[ $failed == 0 ]] && echo passed || echo FAILED) in $(($(date +%s) - began)) s"
exit $failed
}
