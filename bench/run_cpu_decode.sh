#!/usr/bin/env bash
# Times airavata and llama.cpp on the same random-weights checkpoint in one run,
# alternating between the two engines so that machine noise hits both alike.
#
# usage: bench/run_cpu_decode.sh BENCH_DIR [ROUNDS]
#
# BENCH_DIR holds the checkpoints made as bench/README.md describes:
#   airavata-random-bf16/  airavata-random-nf4/  airavata-random-int8/
#   airavata-random-f16.gguf  airavata-random-q4_0.gguf  airavata-random-q8_0.gguf
# Pairs measured: bf16 vs F16, NF4 vs Q4_0, INT8 vs Q8_0 (a pair is skipped when
# one of its files is missing). Each round runs every pair once; airavata is a
# fresh process per run (its load time is reported apart), llama.cpp keeps the
# model loaded and does one warm-up. Both use 2 threads, a 32-token prompt (the
# same English sentence; BOS included) and 16 greedy decode tokens.
# Raw results go to BENCH_DIR/results-TIMESTAMP/, and a summary of medians and
# ratios is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR=${1:?usage: bench/run_cpu_decode.sh BENCH_DIR [ROUNDS]}
ROUNDS=${2:-3}
THREADS=2
DECODE=16
PROMPT="The monsoon arrived early that year, and the farmers in the valley watched the clouds gather over the hills with a mix of hope and worry."
OUT="$BENCH_DIR/results-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

[ -x build/airavata ] || scripts/build.sh
[ -x build/membw ] || scripts/build.sh

echo "== memory read bandwidth ($THREADS threads)"
build/membw "$THREADS" 1024 10 | tee "$OUT/membw.txt"

# PAIRS="nf4:q4_0 int8:q8_0" limits the run to some pairs.
read -r -a pairs <<<"${PAIRS:-bf16:f16 nf4:q4_0 int8:q8_0}"
for round in $(seq 1 "$ROUNDS"); do
    for pair in "${pairs[@]}"; do
        set -- ${pair/:/ }
        ours="$BENCH_DIR/airavata-random-$1"
        theirs="$BENCH_DIR/airavata-random-$2.gguf"
        [ -d "$ours" ] && [ -f "$theirs" ] || { echo "skip $1/$2: missing files"; continue; }
        echo "== round $round: airavata $1"
        # Two runs: the first warms the page cache, the second is measured.
        for run in warm measured; do
            start=$(date +%s.%N)
            build/airavata generate -m "$ours" -p "$PROMPT" -n "$DECODE" --temp 0 --ignore-eos \
                -t "$THREADS" -c 512 >/dev/null 2>"$OUT/airavata-$1-r$round-$run.txt"
            end=$(date +%s.%N)
            echo "wall_s $(echo "$end - $start" | bc)" >>"$OUT/airavata-$1-r$round-$run.txt"
        done
        tail -2 "$OUT/airavata-$1-r$round-measured.txt"
        echo "== round $round: llama.cpp $2"
        .venv-bench/bin/python bench/llamacpp/speed.py "$theirs" --threads "$THREADS" \
            --prompt-tokens 32 --decode-tokens "$DECODE" --reps 1 \
            >"$OUT/llamacpp-$2-r$round.json" 2>"$OUT/llamacpp-$2-r$round.log"
        grep -o '"median": {[^}]*}' "$OUT/llamacpp-$2-r$round.json" | tr -d '\n' || true
        echo
    done
done

python3 bench/summarize_cpu_decode.py "$OUT"
