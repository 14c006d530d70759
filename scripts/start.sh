#!/usr/bin/env bash
# Builds airavata, then gets a model, quantizes it once and serves it.
#
#   scripts/start.sh                       # ai4bharat/Airavata in NF4 on 127.0.0.1:8000
#   MODEL=ORG/NAME QUANT=int8 scripts/start.sh
#   MODEL=/path/to/model/dir QUANT=bf16 scripts/start.sh
#
# MODEL   a Hugging Face repository id (default ai4bharat/Airavata) or a local
#         model directory
# QUANT   nf4 (default), int8, or bf16 (serve the checkpoint unconverted, in the
#         dtype it is stored in)
# HOST, PORT, PARALLEL, THREADS, CTX   passed to `airavata serve`
#         (defaults 127.0.0.1, 8000, 4, all CPUs, the model's maximum up to 4096)
# AIRAVATA_BIN   use this binary and skip installing and building
#
# The model comes from the Hugging Face cache when a copy is there (one
# downloaded by transformers counts), else `airavata pull` downloads it. The
# quantized copy is written once to $AIRAVATA_CACHE (default
# $HF_HOME/airavata, i.e. ~/.cache/huggingface/airavata) and reused.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-ai4bharat/Airavata}
QUANT=${QUANT:-nf4}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
PARALLEL=${PARALLEL:-4}
HF_HOME_DIR=${HF_HOME:-$HOME/.cache/huggingface}
AIRAVATA_CACHE=${AIRAVATA_CACHE:-$HF_HOME_DIR/airavata}

say() { echo "start: $*" >&2; }

case "$QUANT" in
    nf4 | int8 | bf16) ;;
    *) say "QUANT=$QUANT is not supported; use nf4, int8 or bf16"; exit 2 ;;
esac

if [ -n "${AIRAVATA_BIN:-}" ]; then
    BIN=$AIRAVATA_BIN
else
    scripts/install-deps.sh
    scripts/build.sh
    BIN=build/airavata
fi

# 1. The model directory: a local directory, the cache, or a download.
pull_error=""
if [ -d "$MODEL" ]; then
    SOURCE=$(cd "$MODEL" && pwd)
    NAME=$(basename "$SOURCE")
    # A local directory has no commit id: key its quantized copy by path and
    # weight file times and sizes, so a changed model is quantized again.
    STAMP=$( (echo "$SOURCE"; stat -c '%n %Y %s' "$SOURCE"/*.safetensors 2>/dev/null) |
            sha256sum | cut -c1-12)
elif SOURCE=$(HF_HUB_OFFLINE=1 "$BIN" pull -q "$MODEL" 2>/dev/null); then
    say "using the cached copy of $MODEL at $SOURCE"
    NAME=${MODEL//\//--}
else
    SOURCE=""
    if [ "${HF_HUB_OFFLINE:-0}" != "1" ]; then
        err_file=$(mktemp)
        # Progress goes to the terminal; the last error line is kept for the message.
        if SOURCE=$("$BIN" pull "$MODEL" 2> >(tee "$err_file" >&2)); then
            NAME=${MODEL//\//--}
        else
            SOURCE=""
            sleep 0.2 # let tee finish writing
            pull_error=$(tail -1 "$err_file")
        fi
        rm -f "$err_file"
    fi
    if [ -z "$SOURCE" ]; then
        say "cannot get $MODEL: it is not in the Hugging Face cache (${HF_HUB_CACHE:-$HF_HOME_DIR/hub})"
        if [ -n "$pull_error" ]; then
            say "and the download from ${HF_ENDPOINT:-https://huggingface.co} failed: $pull_error"
        else
            say "and HF_HUB_OFFLINE=1 forbids downloading it"
        fi
        say "to use a model you already have, run: MODEL=/path/to/model/dir $0"
        exit 1
    fi
fi

# 2. The quantized copy, made once. A snapshot directory is named by its
# commit, so a new revision of the model gets a new copy.
if [ "$QUANT" = bf16 ]; then
    SERVE_DIR=$SOURCE
else
    if [ -d "$MODEL" ]; then
        SERVE_DIR="$AIRAVATA_CACHE/$NAME-$STAMP-$QUANT"
    else
        SERVE_DIR="$AIRAVATA_CACHE/$NAME-$(basename "$SOURCE")-$QUANT"
    fi
    if [ -f "$SERVE_DIR/config.json" ]; then
        say "using the $QUANT copy at $SERVE_DIR"
    else
        mkdir -p "$AIRAVATA_CACHE"
        say "quantizing $SOURCE to $QUANT (once) into $SERVE_DIR"
        "$BIN" quantize -m "$SOURCE" -o "$SERVE_DIR" --type "$QUANT"
    fi
fi

# 3. Serve.
say "serving $MODEL ($QUANT): chat page at http://$HOST:$PORT/chat, API at http://$HOST:$PORT/v1"
args=(serve -m "$SERVE_DIR" --host "$HOST" --port "$PORT" --parallel "$PARALLEL"
      --model-name "$NAME")
[ -n "${THREADS:-}" ] && args+=(--threads "$THREADS")
[ -n "${CTX:-}" ] && args+=(-c "$CTX")
exec "$BIN" "${args[@]}"
