#!/usr/bin/env bash
# The pending GPU runs of issues 4, 5 and 6 in ONE device call, for a session whose task is lent a GPU
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
#   scale_gpu.json, scale_gpu.log   issue 4: the >= 100M-parameter bf16 run (llm/scale/)
#   bench_gpu.json|.md, bench_gpu.log   issue 6: nca_lab vs TRL on a 0.5B model (llm/bench/); if the bench is
#                                   cut, bench_gpu_partial.json holds every configuration it finished
#   study_gpu.tgz                   issue 5: the verifiable-reasoning study (llm/results/, figures/)
# The full-size single-issue commands are in llm/scale/README.md, llm/bench/README.md, llm/study/README.md.
# Never run on a GPU yet: the stage times are estimates; what a cut stage skipped is in its log / record.
set -u
: "${OUT:?run through the device tool: OUT is its output folder}"
SCALE_S=${SCALE_S:-90} BENCH_S=${BENCH_S:-210} STUDY_S=${STUDY_S:-210}
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/device_run.log"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { log "wheel install failed (carry .whl?)"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$OUT/device_run.log" 2>&1
python3 -c "import torch, transformers, datasets, trl; print(torch.__version__, transformers.__version__, datasets.__version__, trl.__version__)" \
  >> "$OUT/device_run.log" 2>&1

log "issue 4: scale run (${SCALE_S}s)"
timeout "$SCALE_S" python3 -m nca_lab.llm.scale_run --size 100m --out /tmp/scale --steps 100 --batch-size 8 --k 4 \
  --seq-len 1024 --bf16 --loss nca > "$OUT/scale_gpu.log" 2>&1
log "scale run exit $?"
cp /tmp/scale/scale_run.json "$OUT/scale_gpu.json" 2>/dev/null

log "issue 6: bench (${BENCH_S}s)"
timeout "$BENCH_S" python3 -m nca_lab.llm.bench --out /tmp/bench --size 0.5b --steps 20 --batch-size 8 \
  --seq-len 512 --profile-steps 5 > "$OUT/bench_gpu.log" 2>&1
log "bench exit $?"
if [ -f /tmp/bench/bench.json ]; then
  cp /tmp/bench/bench.json "$OUT/bench_gpu.json"; cp /tmp/bench/bench.md "$OUT/bench_gpu.md"
else
  cp /tmp/bench/bench_partial.json "$OUT/bench_gpu_partial.json" 2>/dev/null
fi

log "issue 5: study (${STUDY_S}s budget)"
mkdir -p /tmp/study
# the study's own stage budgets are scaled to STUDY_S - 30 (report and writing inside the rest)
timeout "$STUDY_S" python3 -m nca_lab.llm.study --scale gpu --time-budget-s $((STUDY_S - 30)) --out /tmp/study/work \
  --results-dir /tmp/study/results --figures-dir /tmp/study/figures --no-progress > /tmp/study/log 2>&1
log "study exit $?"
tar czf "$OUT/study_gpu.tgz" -C /tmp/study results figures log work/state.json 2>/dev/null
log "done"; ls -la "$OUT"
