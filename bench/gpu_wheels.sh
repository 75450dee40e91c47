#!/usr/bin/env bash
# Wheels for a GPU machine with no internet whose Python (3.12, with torch) lacks the server's packages:
#   bash bench/gpu_wheels.sh    # here, with the venv installed; then carry .whl/ to the GPU machine
# Versions are the venv's own (pyproject.toml's pins and what they pulled in).
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="fastapi starlette pydantic pydantic_core annotated-types annotated-doc typing-inspection typing_extensions
uvicorn httptools orjson pybase64 boto3 botocore s3transfer jmespath timm opentelemetry-api
openslide-python openslide-bin h5py zarr numcodecs donfig google-crc32c pyyaml tifffile imagecodecs"
mkdir -p .whl
for name in $PACKAGES; do
    pin=$(.venv/bin/pip freeze 2>/dev/null | grep -i -E "^${name//[-_]/[-_]}==" | head -1)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl "$pin"
done
du -sh .whl
# The device takes 64 MiB of carried files: botocore keeps only the service models the kit calls (the GPU
# checks create no AWS client; the rest of its wheel is 15 MB of other services' models).
python3 - <<'PY'
import glob, zipfile
KEEP = ("sagemaker-runtime", "sagemaker", "s3", "sts", "application-autoscaling", "cloudwatch")
wheel = glob.glob(".whl/botocore-*.whl")[0]
with zipfile.ZipFile(wheel) as source:
    items = [(info, source.read(info)) for info in source.infolist()
             if not info.filename.startswith("botocore/data/") or info.filename.count("/") == 2
             or info.filename.split("/")[2] in KEEP]
with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as target:
    for info, data in items:
        target.writestr(info, data)
PY
du -sh .whl
