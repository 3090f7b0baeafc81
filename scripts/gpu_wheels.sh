#!/usr/bin/env bash
# The Python packages a GPU machine lacks, as wheels for its Python (3.12), into .whl/ (git-ignored
# by .git/info/exclude). Run here, where PyPI answers; carry .whl to the machine and install there:
#
#   scripts/gpu_wheels.sh                     # here: ~7 MB of pure-Python wheels
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD     # there (scripts/gpu_check.sh and gpu_t2i.sh do it when .whl exists)
#
# The machine has torch, transformers, safetensors, numpy, huggingface_hub; the project also needs
# diffusers and vector-quantize-pytorch and their pure-Python needs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
# each at the version installed here (the one the tests ran with), else the newest
pin() { "$PY" -c "from importlib.metadata import version as v
try: print('$1==' + v('$1'))
except Exception: print('$1')"; }
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  $(for p in diffusers vector-quantize-pytorch einops einx frozendict loguru torch-einops-utils; do pin $p; done)
ls -la .whl
