#!/usr/bin/env bash
# The three pending GPU runs (the >= 100M-parameter bf16 run, the benchmark against TRL, the verifiable-reasoning
# study) in ONE device call, for a session whose task is lent a GPU
# (the device tool gives 15 minutes of device time per session, 10 minutes per command, the start counted).
#
#   here, once (wheels for what the device image lacks; datasets 5.2.0 needs these dill/multiprocess pins):
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 trl==1.16.0
#   then the device tool's run with  command: "bash llm/device_run.sh"  carry: [".whl"]  timeout_s: 600
#
# Each stage runs under its own `timeout` (seconds: SCALE_S, BENCH_S, STUDY_S; they sum to 540 with the
# install), so the call ends inside its limit and every stage's output comes back even if a later one is cut:
#   scale_gpu.json, scale_gpu.log   the >= 100M-parameter bf16 run (llm/scale/)
#   bench_gpu.json|.md, bench_gpu.log   the benchmark: nca_lab vs TRL on a 0.5B model (llm/bench/); if it is
#                                   cut, bench_gpu_partial.json holds every configuration it finished
#   study_gpu.tgz                   the verifiable-reasoning study (llm/results/, figures/)
#   device_run.log                  the GPU's name, the package versions in use, each stage's exit code
# The full-size command of each run alone is in llm/scale/README.md, llm/bench/README.md, llm/study/README.md.
# Never run on a GPU yet: the stage times are estimates; what a cut stage skipped is in its log / record.
# SCALE_ARGS, BENCH_ARGS, STUDY_SCALE, WORK, WHEELS and PY override the sizes and the scratch folder: tests/test_device_run.py
# runs this script on CPU at the tiny sizes, so its plumbing is checked before a lease is spent on it.
set -u
: "${OUT:?run through the device tool: OUT is its output folder}"
SCALE_S=${SCALE_S:-90} BENCH_S=${BENCH_S:-210} STUDY_S=${STUDY_S:-210}
SCALE_ARGS=${SCALE_ARGS:---size 100m --steps 100 --batch-size 8 --k 4 --seq-len 1024 --bf16}
BENCH_ARGS=${BENCH_ARGS:---size 0.5b --steps 20 --batch-size 8 --seq-len 512 --profile-steps 5}
STUDY_SCALE=${STUDY_SCALE:-gpu} WORK=${WORK:-/tmp/nca_device_run} PY=${PY:-python3} WHEELS=${WHEELS:-.whl}
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/device_run.log"; }
mkdir -p "$WORK"

if ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" "$WHEELS"/*.whl \
    || { log "wheel install failed"; exit 1; }
  export PYTHONPATH="$WORK/site:$PWD"
else
  log "no wheels in $WHEELS/: using the installed packages"; export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$OUT/device_run.log" 2>&1
"$PY" -c "import torch, transformers, datasets, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'datasets', datasets.__version__, 'trl', trl.__version__)" \
  >> "$OUT/device_run.log" 2>&1

log "scale run: >= 100M-parameter bf16 (${SCALE_S}s)"
# shellcheck disable=SC2086  # the *_ARGS are word lists
timeout "$SCALE_S" "$PY" -m nca_lab.llm.scale_run $SCALE_ARGS --loss nca --out "$WORK/scale" > "$OUT/scale_gpu.log" 2>&1
log "scale run exit $?"
cp "$WORK/scale/scale_run.json" "$OUT/scale_gpu.json" 2>/dev/null

log "bench: nca_lab vs TRL (${BENCH_S}s)"
# shellcheck disable=SC2086
timeout "$BENCH_S" "$PY" -m nca_lab.llm.bench $BENCH_ARGS --out "$WORK/bench" > "$OUT/bench_gpu.log" 2>&1
log "bench exit $?"
if [ -f "$WORK/bench/bench.json" ]; then
  cp "$WORK/bench/bench.json" "$OUT/bench_gpu.json"; cp "$WORK/bench/bench.md" "$OUT/bench_gpu.md"
else
  cp "$WORK/bench/bench_partial.json" "$OUT/bench_gpu_partial.json" 2>/dev/null
fi

log "study: verifiable reasoning (${STUDY_S}s budget)"
mkdir -p "$WORK/study"
# the study's own stage budgets are scaled to STUDY_S - 30 (report and writing inside the rest)
timeout "$STUDY_S" "$PY" -m nca_lab.llm.study --scale "$STUDY_SCALE" --time-budget-s $((STUDY_S - 30)) \
  --out "$WORK/study/work" --results-dir "$WORK/study/results" --figures-dir "$WORK/study/figures" --no-progress \
  > "$WORK/study/log" 2>&1
log "study exit $?"
tar czf "$OUT/study_${STUDY_SCALE}.tgz" -C "$WORK/study" results figures log work/state.json 2>/dev/null
log "done"; ls -la "$OUT"
