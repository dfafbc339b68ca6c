#!/usr/bin/env bash
# gpt-study on a CUDA GPU, in one script that prints one Markdown table (part, command, result,
# seconds) headed by the GPU's name:
#
#   bash benchmarks/gpu_check.sh [CORPUS]    # CORPUS: raw TinyStories text (a folder or files);
#                                            # default shared/data/tinystories, ../shared/...
#
# 1. tests   the fast device tests with GPT_STUDY_TEST_DEVICE=cuda (tests/test_device.py: cached
#            against uncached decoding, training steps with the runtime plan's auto choices, SDPA
#            against the plain formula, greedy tokens equal to the CPU's), and the plan's and
#            kernels' tests beside them;
# 2. bench_train.py --device cuda: the fast step's tokens/s and MFU against the measured peak;
# 3. bench_generate.py --device cuda: batch-1 greedy tokens/s (wall);
# 4. prepare the corpus (word tokenizer; bpe where spaCy is not installed), then a 3-minute
#    `seed` training with --dtype auto and `gpt-study evaluate` of its best checkpoint;
# 5. a 1-GPU torchrun of a few training steps (nccl).
#
# Each part runs under `timeout`; the whole takes about 9 minutes on an H100. Without a CUDA
# device it prints one line and exits 0: nothing here requires a GPU. Logs and the table
# (gpu_check.md) go to $GPU_CHECK_OUT (default: a new folder under /tmp). Python packages
# missing on a bare GPU machine can travel as wheels in .whl/ (installed here with --no-index;
# /work/.library/device/README.md). GPU_CHECK_DEVICE=cpu GPU_CHECK_SMALL=1 rehearses the
# script on a CPU with small sizes: it checks the script, not a GPU.
set -u
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SMALL=${GPU_CHECK_SMALL:-0}

if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is false): nothing to check; run it on a GPU machine"
    exit 0
fi

OUTDIR=${GPU_CHECK_OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$OUTDIR"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_check_site .whl/*.whl \
        >"$OUTDIR/wheels.log" 2>&1 && export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

CORPUS=${1:-}
for c in shared/data/tinystories ../shared/data/tinystories; do
    [ -z "$CORPUS" ] && [ -d "$c" ] && CORPUS=$c
done

if [ "$SMALL" = 1 ]; then
    TESTS="tests/test_device.py"
    BENCH_TRAIN=(--batch_size 4 --context_size 64 --vocab_size 4096 --steps 1 --warmup 0 --peak_size 256)
    BENCH_GEN=(--preset tiny --new_tokens 16 --repeats 1 --batches 1)
    MINUTES=0.2 PRESET=tiny DDP_STEPS=4
else
    TESTS="tests/test_device.py tests/test_runtime_plan.py tests/test_kernels.py tests/test_model.py"
    BENCH_TRAIN=(--steps 10 --warmup 2)
    BENCH_GEN=(--new_tokens 256 --repeats 2 --batches 1 8 64)
    MINUTES=3 PRESET=seed DDP_STEPS=50
fi

ROWS=()
RC=0 SECS=0
run_part() {  # run_part NAME LIMIT_S CMD...: the command's output in $OUTDIR/NAME.log
    local name=$1 limit=$2
    shift 2
    local t0
    t0=$(date +%s.%N)
    timeout --kill-after=15 "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
    RC=$?
    SECS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
}
outcome() {  # outcome NAME RESULT: RESULT when the part succeeded, else why it did not
    if [ "$RC" = 0 ]; then
        echo "$2"
    elif [ "$RC" = 124 ] || [ "$RC" = 137 ]; then
        echo "timed out (log: $1.log)"
    else
        echo "failed, exit $RC: $(grep -v '^\s*$' "$OUTDIR/$1.log" | tail -n 1 | tr '|' '/' | cut -c1-160)"
    fi
}
row() { ROWS+=("| $1 | \`$2\` | $3 | $SECS |"); }

# 0. what a bare machine may lack (carry it as wheels in .whl/)
missing=$("$PY" - <<'EOF' 2>&1
import importlib.util
need = ["numpy", "ftfy", "tokenizers", "safetensors", "tqdm", "matplotlib", "pytest"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
SECS=0
row setup "python packages" "${missing:+missing: $missing (the parts that need them fail)}${missing:-all there}"

# 1. the fast device tests on the GPU
run_part tests 300 env GPT_STUDY_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -m "not slow" -p no:cacheprovider $TESTS
row tests "GPT_STUDY_TEST_DEVICE=$DEVICE pytest -m 'not slow' $TESTS" \
    "$(outcome tests "$(grep -E '[0-9]+ (passed|failed)' "$OUTDIR/tests.log" | tail -n 1 | tr -d '=' | xargs)")"

# 2. a training step against the study's, MFU against the GPU's measured peak
run_part bench_train 240 "$PY" benchmarks/bench_train.py --device "$DEVICE" "${BENCH_TRAIN[@]}"
fast=$(grep '^| gpt-study fast step |' "$OUTDIR/bench_train.log" | head -n 1)
row bench_train "benchmarks/bench_train.py --device $DEVICE ${BENCH_TRAIN[*]}" "$(outcome bench_train \
    "$(echo "$fast" | awk -F'|' '{ gsub(/ /, "", $4); gsub(/ /, "", $5); gsub(/^ +| +$/, "", $9); printf "fast step %s tokens/s, %s faster than the study'"'"'s step, MFU %s", $4, $5, $9 }')")"

# 3. decoding
run_part bench_generate 180 "$PY" benchmarks/bench_generate.py --device "$DEVICE" --no_hf "${BENCH_GEN[@]}"
row bench_generate "benchmarks/bench_generate.py --device $DEVICE --no_hf ${BENCH_GEN[*]}" \
    "$(outcome bench_generate "$(grep '^batch-1 greedy' "$OUTDIR/bench_generate.log" | tail -n 1)")"

# 4. prepare, a 3-minute seed run, evaluate
if [ -z "$CORPUS" ]; then
    SECS=0
    row prepare "gpt-study prepare" "skipped: no corpus (pass one: bash benchmarks/gpu_check.sh CORPUS)"
else
    TOK=word
    "$PY" -c 'import spacy' 2>/dev/null || TOK=bpe
    DATA="$OUTDIR/data-$TOK"
    run_part prepare 180 "$PY" -m gpt_study prepare --data "$CORPUS" --tokenizer "$TOK" --out "$DATA" --no-progress
    row prepare "gpt-study prepare --data $CORPUS --tokenizer $TOK" "$(outcome prepare \
        "$TOK tokenizer$([ "$TOK" = bpe ] && echo ' (spaCy is not installed here)'), $("$PY" -c \
        'import json, sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$DATA/meta.json" 2>/dev/null) tokens in the vocabulary")"

    RUN="$OUTDIR/run-$PRESET"
    run_part train "$(awk -v m="$MINUTES" 'BEGIN { printf "%.0f", m * 60 + 240 }')" \
        "$PY" -m gpt_study train --preset "$PRESET" --data "$DATA" --save_root "$RUN" \
        --max_time "$MINUTES" --device "$DEVICE" --dtype auto --no-progress
    summary=$("$PY" - "$RUN" <<'EOF' 2>/dev/null
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1] + "/metrics.jsonl")]
valid = [r for r in rows if r.get("kind") == "valid"]
rate = [r["tokens_per_s"] for r in rows if r.get("kind") == "train" and r.get("tokens_per_s")]
v = valid[-1]
speed = f", {max(rate):,.0f} tokens/s" if rate else ""
print(f"step {v['step']}, valid NLL {v['valid_nll']:.3f} (ppl {v['valid_ppl']:.1f}){speed}")
EOF
)
    choices=$(grep -o 'device choices: .*' "$RUN/info.log" 2>/dev/null | head -n 1 | sed 's/^device choices: //')
    row train "gpt-study train --preset $PRESET --max_time $MINUTES --device $DEVICE --dtype auto" \
        "$(outcome train "$summary; $choices")"

    run_part evaluate 180 "$PY" -m gpt_study evaluate --checkpoint "$RUN/best" --device "$DEVICE" \
        --samples 2 --json "$OUTDIR/evaluate.json" --no-progress
    scores=$("$PY" - "$OUTDIR/evaluate.json" <<'EOF' 2>/dev/null
import json, sys

def find(d, key):
    """The first number under ``key`` anywhere in the JSON."""
    if isinstance(d, dict):
        if isinstance(d.get(key), (int, float)):
            return d[key]
        d = list(d.values())
    if isinstance(d, list):
        for x in d:
            if (got := find(x, key)) is not None:
                return got
    return None

r = json.load(open(sys.argv[1]))
names = {"nll": "NLL", "perplexity": "ppl", "bits_per_byte": "bits/byte"}
names |= {"eot_share": "stories ending", "distinct_2": "distinct-2"}
print(", ".join(f"{n} {v:.3f}" for k, n in names.items() if (v := find(r, k)) is not None))
EOF
)
    row evaluate "gpt-study evaluate --checkpoint $PRESET/best --device $DEVICE" "$(outcome evaluate "$scores")"

    # 5. one process under torchrun
    run_part torchrun 240 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m gpt_study \
        train --preset tiny --data "$DATA" --save_root "$OUTDIR/run-torchrun" --device "$DEVICE" \
        --max_steps "$DDP_STEPS" --iters_per_epoch "$DDP_STEPS" --epoch 1 --eval_iters 5 --no-progress
    backend=$(grep -o 'backend [a-z]*' "$OUTDIR/run-torchrun/info.log" 2>/dev/null | head -n 1)
    ddp=$(grep 'valid @ step' "$OUTDIR/run-torchrun/info.log" 2>/dev/null | tail -n 1 |
        sed -E 's/.*valid @ (step [0-9]+).*(NLL [0-9.]+).*/\1, valid \2/')
    row torchrun "torchrun --standalone --nproc_per_node=1 -m gpt_study train --preset tiny --max_steps $DDP_STEPS" \
        "$(outcome torchrun "$backend, $ddp")"
fi

if command -v nvidia-smi >/dev/null 2>&1 && [ "$DEVICE" != cpu ]; then
    GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)
else
    GPU="$DEVICE: $("$PY" -c 'import platform; print(platform.processor() or platform.machine())')"
fi
TORCH=$("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')
{
    echo "gpu_check on $GPU; torch $TORCH; $(date -u +%Y-%m-%d)"
    echo
    echo "| part | command | result | seconds |"
    echo "| --- | --- | --- | ---: |"
    printf '%s\n' "${ROWS[@]}"
} | tee "$OUTDIR/gpu_check.md"
echo
echo "logs: $OUTDIR"
