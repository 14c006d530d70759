#!/usr/bin/env bash
# Create the benchmark virtual environment (.venv-bench at the repository root)
# and install bench/requirements-bench.txt into it.
#
# llama-cpp-python has no CPU wheel on PyPI, so pip compiles llama.cpp from
# source. GGML_NATIVE=ON builds for the host CPU (AVX2/FMA/F16C here), which is
# what a fair baseline needs. The build takes 10-30 minutes on 2 cores.
#
# Usage: bench/setup-bench-venv.sh            (from any directory)
#        JOBS=4 bench/setup-bench-venv.sh     (parallel compile jobs, default 2)
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$repo_root/.venv-bench"
python="${PYTHON:-python3}"
jobs="${JOBS:-2}"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv"
    "$python" -m venv "$venv"
fi

"$venv/bin/python" -m pip install --upgrade pip

# Small wheels first, so the checkpoint tools work while llama.cpp compiles.
grep -v '^llama-cpp-python' "$repo_root/bench/requirements-bench.txt" \
    > "$venv/requirements-wheels.txt"
"$venv/bin/python" -m pip install -r "$venv/requirements-wheels.txt"

export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_CUDA=OFF -DLLAMA_CURL=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="$jobs"
echo "building llama-cpp-python with CMAKE_ARGS=$CMAKE_ARGS, $jobs jobs"
"$venv/bin/python" -m pip install --no-cache-dir --verbose \
    -r "$repo_root/bench/requirements-bench.txt"

"$venv/bin/python" -c "import llama_cpp, gguf, numpy, safetensors, sentencepiece; print('llama_cpp', llama_cpp.__version__)"
