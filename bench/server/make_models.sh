#!/usr/bin/env bash
# Makes matching model files for the server benchmark from one Hugging Face
# checkpoint (F32, F16 or BF16 safetensors), so both engines serve the same
# weights at a similar bit width:
#
#   PREFIX-nf4/   airavata quantize --type nf4   <->  PREFIX-q4_0.gguf
#   PREFIX-int8/  airavata quantize --type int8  <->  PREFIX-q8_0.gguf
#   SOURCE        (unquantized)                  <->  PREFIX-f16.gguf
#
# Both quantized forms are made from the unquantized source, never from each
# other. NF4 (64-value blocks, double-quantized absmax) and Q4_0 (32-value
# blocks, f16 scale) are different 4-bit formats, so the pairs match in
# weights and size class, not bit for bit. Existing outputs are kept.
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: bench/server/make_models.sh SOURCE_DIR PREFIX" >&2; exit 2; }
SOURCE=$1 PREFIX=$2
cd "$(dirname "$0")/../.."
BIN=${AIRAVATA_BIN:-build/airavata}
BENCH_PYTHON=${BENCH_PYTHON:-.venv-bench/bin/python}
[ -f "$SOURCE/config.json" ] || { echo "make_models.sh: $SOURCE has no config.json" >&2; exit 2; }
[ -x "$BIN" ] || { echo "make_models.sh: $BIN not found; run scripts/build.sh or set AIRAVATA_BIN" >&2; exit 2; }

for type in nf4 int8; do
    if [ -e "$PREFIX-$type" ]; then
        echo "make_models.sh: $PREFIX-$type exists; keeping it"
    else
        "$BIN" quantize -m "$SOURCE" -o "$PREFIX-$type" --type "$type"
    fi
done

if [ -e "$PREFIX-f16.gguf" ]; then
    echo "make_models.sh: $PREFIX-f16.gguf exists; only quantizing it"
    "$BENCH_PYTHON" bench/llamacpp/write_gguf.py "$SOURCE" -o "$PREFIX-f16.gguf" \
        --skip-convert --quantize q8_0,q4_0
else
    "$BENCH_PYTHON" bench/llamacpp/write_gguf.py "$SOURCE" -o "$PREFIX-f16.gguf" \
        --quantize q8_0,q4_0
fi
ls -l "$PREFIX"-*.gguf
