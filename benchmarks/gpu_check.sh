#!/usr/bin/env bash
# The GPU check of issue 6, as one prepared call, sized for the 15 minutes of device time a lent machine now
# gives a whole session (its start, a minute or two, counts too): the parts most worth knowing run first, and
# with every part cut at its cap the whole call still ends within ~9.5 minutes (run it with timeout_s 600).
#
#   bash benchmarks/gpu_check.sh prepare    # here, before asking for the machine: fills the git-ignored .gpu/
#   bash benchmarks/gpu_check.sh            # there (the device tool's run: carry [".gpu"], timeout_s 600)
#
# prepare puts into .gpu/ what the machine cannot download: the GPT-2 BPE files for tiktoken, shards of the
# King James Bible (the demo's corpus, ~1M tokens; FineWeb-Edu is out of reach) and the HellaSwag val split
# (from ../shared/data when it is there; without it the HellaSwag parts are skipped).
#
# The run, each part capped by `timeout` (seconds), in this order; a part cut short keeps what it wrote:
#   1. bench.py, gpt2 124M at B=64, T=1024: the lecture's settings against the levers never measured on a
#      GPU, cheapest first (pinned, pinned-no-sync and reduce-overhead reuse the baseline's compiled kernels from
#      inductor's cache; reduce-overhead = CUDA graphs; max-autotune-no-cudagraphs, last, autotunes for
#      minutes and may be cut), each with a profile of one step, to see where the time goes (the baseline
#      reached 41% of the H100's peak)                                                            (<= 300 s)
#   2. train_gpt2.py on CUDA, gpt2 124M at B=64, T=1024, 262,144 tokens a step (half the lecture's): 3 steps
#      with validation, HellaSwag and samples, then --resume auto for 2 more (its first resume on a GPU: one
#      crashed there until a review found it)                                                      (<= 160 s)
#   3. hellaswag_bench.py on 1,000 val examples: the vocabulary cut, never measured on a GPU        (<= 75 s)
# Outputs ($OUT; at most 8 files come back): gpu_check.log (everything printed), results.jsonl (the bench and
# HellaSwag lines, to append to benchmarks/results.jsonl), per bench configuration profile.NAME.txt (the ops
# and kernels by their own time, 5 files) and profiles.tar (their chrome traces, each gzipped, in one file).
#
# MODEL_ARGS and BATCH_ARGS shrink the run for a try on a CPU (DEVICE=cpu), e.g.
#   OUT=/tmp/out DEVICE=cpu MODEL_ARGS="--n-layer 2 --n-head 2 --n-embd 64" \
#     BATCH_ARGS="-B 4 -T 64 --total-batch-size 512" bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
GPU=.gpu

if [ "${1:-}" = prepare ]; then
    set -e
    PY=${PYTHON:-python3}
    [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python  # the quick start's venv, if there is one
    mkdir -p "$GPU"
    TIKTOKEN_CACHE_DIR=$GPU/tiktoken "$PY" gpt2_tokenizer.py --seed-cache --cache-dir "$GPU/tiktoken"
    "$PY" -c "import demo, sys; sys.exit(demo.bible_corpus('$GPU/kjv_chapters.jsonl') is None)"
    TIKTOKEN_CACHE_DIR=$GPU/tiktoken "$PY" fineweb.py --files "$GPU/kjv_chapters.jsonl" --local-dir "$GPU/kjv" \
        --shard-size 200000 --quiet
    if [ -f ../shared/data/hellaswag_val.jsonl ]; then
        cp ../shared/data/hellaswag_val.jsonl "$GPU/"
        head -n 200 "$GPU/hellaswag_val.jsonl" > "$GPU/hellaswag_val_200.jsonl"
    fi
    # the device gets a copy of the working tree without .git: say here which code it runs
    dirty=$(git diff --quiet HEAD || echo " + uncommitted changes")
    echo "code, as prepared: $(git log -1 --format='%h %s' | cut -c1-100)$dirty" > "$GPU/revision"
    du -sh "$GPU"
    exit 0
fi

: "${OUT:?set OUT to the folder for the results (the device tool sets it)}"
DEVICE=${DEVICE:-cuda}
MODEL_ARGS=${MODEL_ARGS:-}
BATCH_ARGS=${BATCH_ARGS:---total-batch-size 262144}
PY=${PYTHON:-python3}
export TIKTOKEN_CACHE_DIR=$GPU/tiktoken PYTHONUNBUFFERED=1
LOG=$OUT/gpu_check.log
[ -d "$GPU/kjv" ] || { echo "error: no $GPU/kjv: run 'bash benchmarks/gpu_check.sh prepare' here first" >&2; exit 1; }

part() {  # part SECONDS TITLE COMMAND...: one capped part, its output into the log
    local cap=$1 title=$2
    shift 2
    echo "== $title (cap ${cap} s) $(date -u +%H:%M:%S)" | tee -a "$LOG"
    timeout -k 10 "$cap" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    case $rc in 124|137) echo "== exit $rc: cut at the cap" ;; *) echo "== exit $rc" ;; esac | tee -a "$LOG"
}

{
    date -u
    cat "$GPU/revision" 2>/dev/null
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
    "$PY" -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', \
platform.python_version(), '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
} 2>&1 | tee "$LOG"

# 1. what the compile modes do to the lecture's step (baseline first; the rest as the budget allows)
part 300 "bench.py: baseline, pinned, pinned-no-sync, reduce-overhead, max-autotune-no-cudagraphs" \
    "$PY" bench.py --device "$DEVICE" $MODEL_ARGS $BATCH_ARGS \
    --configs baseline,pinned,pinned-no-sync,reduce-overhead,max-autotune-no-cudagraphs --steps 10 --warmup 2 \
    --max-seconds 30 --timeout 200 --time-budget 290 --profile "$OUT/profile.json" --profile-steps 1 \
    --results "$OUT/results.jsonl"
# the traces in one file: the device tool brings back 8 files at most
(cd "$OUT" && ls profile.*.json >/dev/null 2>&1 && gzip -f profile.*.json && tar -cf profiles.tar profile.*.json.gz \
    && rm -f profile.*.json.gz)

# 2. the training script itself on the GPU, and a resume there (its checkpoint holds the CUDA RNG states)
HS=()
[ -f "$GPU/hellaswag_val_200.jsonl" ] && HS=(--hellaswag-file "$GPU/hellaswag_val_200.jsonl") || HS=(--no-hellaswag)
SMOKE=(--data-root "$GPU/kjv" --log-dir /tmp/gpu_check_log --device "$DEVICE" $MODEL_ARGS $BATCH_ARGS
       --eval-interval 2 --val-steps 2 --sample-interval 2 "${HS[@]}")
rm -rf /tmp/gpu_check_log
part 100 "train_gpt2.py: 3 steps" "$PY" train_gpt2.py "${SMOKE[@]}" --stop-after 3
part 60 "train_gpt2.py --resume auto: 2 more" "$PY" train_gpt2.py "${SMOKE[@]}" --resume auto --stop-after 2
{ echo "-- log.txt"; cat /tmp/gpu_check_log/log.txt; ls -l /tmp/gpu_check_log; } 2>&1 | tee -a "$LOG"

# 3. HellaSwag: the lecture's scheme against hellaswag.py at 1 and 32 examples a pass
if [ -f "$GPU/hellaswag_val.jsonl" ]; then
    part 75 "hellaswag_bench.py: 1,000 val examples" \
        "$PY" benchmarks/hellaswag_bench.py --device "$DEVICE" $MODEL_ARGS --file "$GPU/hellaswag_val.jsonl" \
        --limit 1000 --batch-size 32 --results "$OUT/results.jsonl"
fi
echo "== done $(date -u +%H:%M:%S); files: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
