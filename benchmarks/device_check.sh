#!/usr/bin/env bash
# The GPU check in one call, for the GPU machine's bare image (python3 + torch 2.11 + torchdiffeq +
# tensorboard; no registry): bootstrap hlvm from the tree and the wheels carried in wheels/
# (benchmarks/fetch_wheels.sh makes them here), then, within ~8 minutes,
#   1. the CUDA test subset (HLVM_DEVICE=cuda),
#   2. benchmarks/step_overhead.py --device cuda (SVI, recorded, CUDA graph, default, plain PyTorch),
#   3. 2 epochs of VAE and VDM on full MNIST, with and without bf16 (--amp), in images/s,
# and write device_check.json and gpu.md (a table naming the device) to $OUT (reports/device without one).
#
#   run(command="bash benchmarks/device_check.sh", carry=["wheels"], timeout_s=560)   # on the GPU machine
#   bash benchmarks/device_check.sh --cpu        # the same path here, on the CPU, shorter runs (≤ 5 min)
#
# Each stage has its own time limit and the script goes on when one fails: the report says what ran.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=cuda; [[ "${1:-}" == "--cpu" ]] && MODE=cpu
THREADS=${THREADS:-$([[ $MODE == cuda ]] && echo 4 || echo 1)}
OUT=${OUT:-reports/device}; mkdir -p "$OUT/runs"
LOG="$OUT/device_check.log"; : > "$LOG"
BASE=${PYTHON:-python3}
VENV=${VENV:-/tmp/hlvm-device-venv}
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

# -- bootstrap: a venv over the image's packages (torch stays the image's), the carried wheels, hlvm itself
if [[ "${NO_VENV:-0}" == 1 ]]; then PY=$BASE; else
  "$BASE" -m venv --system-site-packages "$VENV" >>"$LOG" 2>&1 || say "venv: could not create $VENV"
  PY="$VENV/bin/python"; [[ -x "$PY" ]] || PY=$BASE
  # a base interpreter that is itself a venv (the CPU rehearsal here) lends its packages by a .pth file
  if ! "$PY" -c "import torch" 2>/dev/null && "$BASE" -c "import torch" 2>/dev/null; then
    "$BASE" -c "import sysconfig; p = sysconfig.get_paths(); print(p['purelib']); print(p['platlib'])" \
      > "$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_image_packages.pth"
  fi
fi
say "python: $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)' 2>&1)"
if compgen -G "wheels/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps wheels/*.whl >>"$LOG" 2>&1 && say "wheels: installed" || say "wheels: install FAILED (see $LOG)"
else say "wheels: none carried (run benchmarks/fetch_wheels.sh here and carry wheels/)"; fi
if $PY -c "import hlvm.zoo" 2>/dev/null && [[ "${NO_VENV:-0}" == 1 ]]; then
  say "hlvm: already installed in $PY's environment"
elif ! $PY -m pip install -q --no-index --no-deps --no-build-isolation . >>"$LOG" 2>&1; then
  say "hlvm: pip install failed (no setuptools?); running from the tree with hlvm/zoo -> models"
  [[ -e hlvm/zoo ]] || ln -s ../models hlvm/zoo
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY benchmarks/device_report.py probe --out "$OUT" | tee -a "$LOG"

# -- 1. the CUDA test subset: the Pyro programs, estimators, the recorded step, training and evaluation
TESTS="tests/programs tests/test_compile.py tests/eval/test_evaluate.py tests/test_checkpoint_safety.py"
say "tests ($MODE)"
HLVM_DEVICE=$MODE timeout 200 $PY -m pytest -q -p no:cacheprovider $TESTS -k "not torchrun" > "$OUT/tests.txt" 2>&1
[[ $? == 124 ]] && echo "TIMED OUT after 200 s (the tests above had passed; the rest did not run)" >> "$OUT/tests.txt"
tail -1 "$OUT/tests.txt" | tee -a "$LOG"

# -- 2. the step against plain PyTorch
say "step_overhead ($MODE)"
timeout 150 $PY benchmarks/step_overhead.py --device "$MODE" --repeats 5 --threads "$THREADS" --json "$OUT/step_overhead.json" >>"$LOG" 2>&1 \
  || say "step_overhead: FAILED or timed out"

# -- 3. training throughput on full MNIST (the IDX files carried in wheels/mnist)
if [[ $MODE == cuda ]]; then BUDGET=(--epochs 2); AMPS=(no yes); else BUDGET=(--steps 40); AMPS=(no); fi
for model in vae vdm; do for amp in "${AMPS[@]}"; do
  name="$model-$MODE$([[ $amp == yes ]] && echo -bf16)"
  say "train $name"
  timeout 100 $PY -m hlvm train "$model" --data mnist --data-dir wheels/mnist "${BUDGET[@]}" --batch-size 128 \
    --device "$MODE" $([[ $amp == yes ]] && echo --amp) --eval-every 1000000 --eval-examples 500 --no-progress \
    --threads "$THREADS" --out "$OUT/runs/$name" --overwrite >>"$LOG" 2>&1 || say "train $name: FAILED or timed out"
done; done

$PY benchmarks/device_report.py report --out "$OUT" --mode "$MODE"
