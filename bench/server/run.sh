#!/usr/bin/env bash
# Server benchmark: `airavata serve`, llama.cpp's OpenAI-compatible server
# (llama-cpp-python) and, with --python-app, the FastAPI + transformers +
# bitsandbytes service it replaces, all on the same model and prompts.
#
# Each server runs alone on 127.0.0.1 on a free port. After its health check
# passes, bench/server/load.py runs the closed-loop load at each client count
# and records aggregate generated tokens/s and p50/p95 latency. The server is
# then stopped by its PID. summarize.py writes results.md with the ratios.
#
# ours and llama.cpp are compared on POST /v1/completions with the same
# sampling (temperature 0.7, top_p 0.9, top_k 50) and EOS disabled
# (ignore_eos for ours, logit_bias -100 on the EOS id for llama.cpp), so every
# request generates exactly --new-tokens tokens. The FastAPI app only has
# POST /generate and cannot skip EOS, so with --python-app ours is measured a
# second time on /generate with the same defaults.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/server/run.sh MODEL_DIR GGUF [options]

  MODEL_DIR              model directory for `airavata serve` (bf16, NF4 or int8)
  GGUF                   the same weights for llama.cpp (F16, Q4_0 or Q8_0)

  --clients "LIST"       concurrent clients to measure (default "1 4 8 16"); our
                         server gets --parallel equal to the largest
  --requests N           requests per client count, warm-up excluded (default 32)
  --new-tokens N         tokens generated per request (default 20)
  --threads N            forward-pass threads of every server (default 2)
  --ctx N                context length per sequence of ours and llama.cpp
                         (default 512; must cover a prompt plus --new-tokens)
  --time-limit S         seconds after which no new request is sent at one client
                         count (default 600)
  --servers "LIST"       servers to measure among: ours llamacpp (default both)
  --python-app           also measure the FastAPI app (slow on CPU)
  --python-model DIR     model the FastAPI app loads and quantizes at load time
                         (default MODEL_DIR)
  --python-quant Q       nf4, int8 or none (default nf4)
  --python-clients "L"   client counts for the FastAPI app (default: --clients)
  --python-requests N    requests per client count for the FastAPI app
                         (default 0: one per client)
  --out DIR              results folder (default bench/server/results/DATE-TIME)
  --bin PATH             airavata binary (default build/airavata; built with
                         scripts/build.sh when missing)

environment: BENCH_PYTHON (default .venv-bench/bin/python) runs llama.cpp's
server and the load generator; REF_PYTHON (default .venv-ref/bin/python) runs
the FastAPI app.
EOF
}

die() { echo "run.sh: $*" >&2; exit 2; }

cd "$(dirname "$0")/../.."
ROOT=$PWD

case "${1:-}" in -h|--help) usage; exit 0 ;; esac
[ $# -ge 2 ] || { usage >&2; exit 2; }
MODEL_DIR=$1 GGUF=$2
shift 2

CLIENTS="1 4 8 16" REQUESTS=32 NEW_TOKENS=20 THREADS=2 CTX=512 TIME_LIMIT=600
SERVERS="ours llamacpp" PYTHON_APP=0 PYTHON_MODEL="" PYTHON_QUANT=nf4
PYTHON_CLIENTS="" PYTHON_REQUESTS=0 OUT="" BIN=build/airavata
while [ $# -gt 0 ]; do
    case "$1" in
        --clients|--requests|--new-tokens|--threads|--ctx|--time-limit|--servers|\
        --python-model|--python-quant|--python-clients|--python-requests|--out|--bin)
            [ $# -ge 2 ] || die "$1 needs a value" ;;
    esac
    case "$1" in
        --clients) CLIENTS=$2; shift 2 ;;
        --requests) REQUESTS=$2; shift 2 ;;
        --new-tokens) NEW_TOKENS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --ctx) CTX=$2; shift 2 ;;
        --time-limit) TIME_LIMIT=$2; shift 2 ;;
        --servers) SERVERS=$2; shift 2 ;;
        --python-app) PYTHON_APP=1; shift ;;
        --python-model) PYTHON_MODEL=$2; shift 2 ;;
        --python-quant) PYTHON_QUANT=$2; shift 2 ;;
        --python-clients) PYTHON_CLIENTS=$2; shift 2 ;;
        --python-requests) PYTHON_REQUESTS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1'; run with --help for the list" ;;
    esac
done

is_count() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]; }
for c in $CLIENTS ${PYTHON_CLIENTS}; do
    is_count "$c" 1 256 || die "client count '$c' is invalid; use 1 to 256"
done
[ -n "$CLIENTS" ] || die "--clients is empty"
is_count "$REQUESTS" 1 100000 || die "--requests '$REQUESTS' is invalid; use 1 to 100000"
is_count "$PYTHON_REQUESTS" 0 100000 || die "--python-requests '$PYTHON_REQUESTS' is invalid"
is_count "$NEW_TOKENS" 1 4096 || die "--new-tokens '$NEW_TOKENS' is invalid; use 1 to 4096"
is_count "$THREADS" 1 1024 || die "--threads '$THREADS' is invalid"
is_count "$CTX" $((NEW_TOKENS + 64)) 1048576 ||
    die "--ctx '$CTX' is invalid; it must be at least --new-tokens + 64 ($((NEW_TOKENS + 64))) to fit the prompts"
is_count "$TIME_LIMIT" 1 86400 || die "--time-limit '$TIME_LIMIT' is invalid; use 1 to 86400 s"
for s in $SERVERS; do
    case $s in ours|llamacpp) ;; *) die "unknown server '$s' in --servers; use ours, llamacpp" ;; esac
done
case $PYTHON_QUANT in nf4|int8|none) ;; *) die "--python-quant must be nf4, int8 or none" ;; esac
[ -f "$MODEL_DIR/config.json" ] || die "$MODEL_DIR has no config.json; pass a model directory"
[ -f "$GGUF" ] || die "GGUF file '$GGUF' not found; make one with bench/server/make_models.sh"
MODEL_DIR=$(cd "$MODEL_DIR" && pwd)
GGUF=$(cd "$(dirname "$GGUF")" && pwd)/$(basename "$GGUF")
PYTHON_MODEL=${PYTHON_MODEL:-$MODEL_DIR}
PYTHON_CLIENTS=${PYTHON_CLIENTS:-$CLIENTS}
MAX_CLIENTS=$(printf '%s\n' $CLIENTS $PYTHON_CLIENTS | sort -n | tail -1)

BENCH_PYTHON=${BENCH_PYTHON:-$ROOT/.venv-bench/bin/python}
REF_PYTHON=${REF_PYTHON:-$ROOT/.venv-ref/bin/python}
[ -x "$BENCH_PYTHON" ] || die "$BENCH_PYTHON not found; run bench/setup-bench-venv.sh and pip install -r bench/requirements-server.txt"
if [ "$PYTHON_APP" = 1 ]; then
    [ -x "$REF_PYTHON" ] || die "$REF_PYTHON not found; set REF_PYTHON to a Python with torch, transformers, bitsandbytes, fastapi and uvicorn"
    [ -f "$PYTHON_MODEL/config.json" ] || die "--python-model $PYTHON_MODEL has no config.json"
fi
if [[ " $SERVERS " == *" ours "* ]]; then
    if [ ! -x "$BIN" ]; then
        echo "run.sh: $BIN is missing; building it with scripts/build.sh" >&2
        scripts/build.sh
    fi
    "$BIN" serve --help >/dev/null 2>&1 || die "$BIN has no 'serve' command; rebuild it"
fi
EOS_ID=$("$BENCH_PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("eos_token_id", 2))' "$MODEL_DIR/config.json")

OUT=${OUT:-bench/server/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
echo "run.sh: results go to $OUT"

free_port() {
    "$BENCH_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

SERVER_PID=""

# Stops the running server by its PID: SIGTERM, then SIGKILL after 30 s.
stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 60); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "run.sh: server $SERVER_PID ignored SIGTERM for 30 s; sending SIGKILL" >&2
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# Waits until GET URL returns 200 while the server process is alive.
wait_healthy() {
    local url=$1 limit=$2 log=$3 waited=0
    while [ "$waited" -lt "$limit" ]; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "run.sh: the server exited before it was ready; the end of $log:" >&2
            tail -20 "$log" >&2
            return 1
        fi
        if "$BENCH_PYTHON" -c 'import sys,urllib.request; sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=5).status == 200 else 1)' "$url" 2>/dev/null; then
            return 0
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "run.sh: $url did not return 200 within $limit s; see $log" >&2
    return 1
}

# Runs the load at each client count against one started server.
# Arguments: NAME API URL CLIENT_COUNTS REQUESTS EXTRA_JSON
measure() {
    local name=$1 api=$2 url=$3 counts=$4 requests=$5 extra=$6 status=0 n
    for c in $counts; do
        n=$requests
        [ "$n" -gt 0 ] || n=$c
        echo "run.sh: $name: $c clients, $n requests ($(cut -d' ' -f1-3 /proc/loadavg) load)"
        "$BENCH_PYTHON" bench/server/load.py --url "$url" --api "$api" --clients "$c" \
            --requests "$n" --new-tokens "$NEW_TOKENS" --time-limit "$TIME_LIMIT" \
            --timeout "$((TIME_LIMIT + 600))" --extra "$extra" \
            --tokenizer "$MODEL_DIR/tokenizer.model" \
            --out "$OUT/$name-c$c.json" >"$OUT/$name-c$c.summary.json" || status=1
        cat "$OUT/$name-c$c.summary.json"
    done
    return $status
}

FAILED=0

run_ours() {
    local api=$1 extra=$2 name=$3 port log
    port=$(free_port)
    log=$OUT/$name.server.log
    "$BIN" serve -m "$MODEL_DIR" --host 127.0.0.1 --port "$port" --parallel "$MAX_CLIENTS" \
        --threads "$THREADS" --ctx "$CTX" --max-queue 1024 --timeout 600 >"$log" 2>&1 &
    SERVER_PID=$!
    if wait_healthy "http://127.0.0.1:$port/health" 600 "$log"; then
        measure "$name" "$api" "http://127.0.0.1:$port" "$CLIENTS" "$REQUESTS" "$extra" || FAILED=1
    else
        FAILED=1
    fi
    stop_server
}

run_llamacpp() {
    local port log
    port=$(free_port)
    log=$OUT/llamacpp.server.log
    # llama-cpp-python's server decodes one request at a time.
    "$BENCH_PYTHON" -m llama_cpp.server --model "$GGUF" --host 127.0.0.1 --port "$port" \
        --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx "$CTX" >"$log" 2>&1 &
    SERVER_PID=$!
    if wait_healthy "http://127.0.0.1:$port/v1/models" 600 "$log"; then
        measure llamacpp openai "http://127.0.0.1:$port" "$CLIENTS" "$REQUESTS" \
            "{\"logit_bias\": {\"$EOS_ID\": -100}}" || FAILED=1
    else
        FAILED=1
    fi
    stop_server
}

run_python_app() {
    local port log
    port=$(free_port)
    log=$OUT/python.server.log
    "$REF_PYTHON" bench/fastapi_app/app.py --model "$PYTHON_MODEL" --quant "$PYTHON_QUANT" \
        --host 127.0.0.1 --port "$port" --threads "$THREADS" >"$log" 2>&1 &
    SERVER_PID=$!
    # Loading a 7B bf16 checkpoint and quantizing it on the CPU takes minutes.
    if wait_healthy "http://127.0.0.1:$port/health" 1800 "$log"; then
        measure python generate "http://127.0.0.1:$port" "$PYTHON_CLIENTS" "$PYTHON_REQUESTS" \
            '{}' || FAILED=1
    else
        FAILED=1
    fi
    stop_server
}

"$BENCH_PYTHON" - "$OUT/meta.json" "$MODEL_DIR" "$GGUF" "$PYTHON_MODEL" "$PYTHON_QUANT" \
    "$CLIENTS" "$REQUESTS" "$NEW_TOKENS" "$THREADS" "$CTX" "$BIN" <<'EOF'
import json, os, platform, sys
out, model, gguf, pymodel, pyquant, clients, requests, new_tokens, threads, ctx, binary = sys.argv[1:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
gguf_type = None
try:
    import gguf as gguf_lib
    reader = gguf_lib.GGUFReader(gguf)
    field = reader.fields.get("general.file_type")
    if field is not None:
        gguf_type = gguf_lib.LlamaFileType(int(field.parts[field.data[0]][0])).name
except Exception as e:  # the file type is informational only
    gguf_type = f"unknown ({type(e).__name__})"
with open(os.path.join(model, "config.json")) as f:
    quant = json.load(f).get("quantization_config")
json.dump({"model_dir": model, "model_quantization": quant, "gguf": gguf,
           "gguf_file_type": gguf_type, "python_model": pymodel, "python_quant": pyquant,
           "clients": [int(c) for c in clients.split()], "requests": int(requests),
           "new_tokens": int(new_tokens), "threads": int(threads), "ctx": int(ctx), "airavata_bin": binary,
           "cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
           "loadavg_start": open("/proc/loadavg").read().split()[:3]},
          open(out, "w"), indent=1)
EOF

for s in $SERVERS; do
    case $s in
        ours) run_ours openai '{"ignore_eos": true}' ours ;;
        llamacpp) run_llamacpp ;;
    esac
done
if [ "$PYTHON_APP" = 1 ]; then
    if [[ " $SERVERS " == *" ours "* ]]; then
        # Our server on the FastAPI app's route and defaults.
        CLIENTS_SAVED=$CLIENTS REQUESTS_SAVED=$REQUESTS
        CLIENTS=$PYTHON_CLIENTS
        [ "$PYTHON_REQUESTS" -gt 0 ] && REQUESTS=$PYTHON_REQUESTS || REQUESTS=0
        run_ours generate '{}' ours-generate
        CLIENTS=$CLIENTS_SAVED REQUESTS=$REQUESTS_SAVED
    fi
    run_python_app
fi

"$BENCH_PYTHON" bench/server/summarize.py "$OUT" >"$OUT/results.md"
cat "$OUT/results.md"
[ "$FAILED" = 0 ] || { echo "run.sh: some measurements failed; see the logs in $OUT" >&2; exit 1; }
