#!/usr/bin/env bash
# Create .venv-ref at the repository root with the packages that regenerate
# the reference fixtures (tools/requirements-ref.txt): torch, transformers,
# safetensors, sentencepiece, numpy, bitsandbytes and accelerate.
#
# The Linux torch wheels on PyPI are CUDA builds. The fixture scripts only run
# on the CPU, but torch's shared libraries link against the CUDA runtime,
# cuBLAS, cuDNN, NCCL and others, so `import torch` fails without the nvidia
# packages. They are installed with it: the venv takes about 6 GB of disk.
#
# Usage: tools/setup-ref-venv.sh        (from any directory; rerunning is cheap)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-ref"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$root/tools/requirements-ref.txt"
"$venv/bin/python" -c 'import torch, transformers, safetensors, sentencepiece, bitsandbytes; print("torch", torch.__version__, "transformers", transformers.__version__, "bitsandbytes", bitsandbytes.__version__)'
