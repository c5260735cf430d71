#!/usr/bin/env bash
# One device session (the workplace's lent GPU, or any CUDA machine): install membench over the
# machine's own torch, run the GPU tests and the validation grid, and leave everything in $OUT.
#
#     run(command="bash benchmarks/gpu_session.sh", timeout_s=590)     # then: cp $files_at/gpu-validation.md docs/
#
# Budget: install ~10 s, the grid <= 420 s (it stops starting configs after 330 s), the tests <= 150 s.
#
# The machine's image has torch, transformers, peft, pandas, matplotlib, typer, rich and nvidia-ml-py;
# membench itself installs without dependencies (nothing can be fetched there).
set -uo pipefail
OUT=${OUT:-/tmp/membench-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore
PY=${PYTHON:-python3}
$PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || export PYTHONPATH=$PWD
$PY -c "import torch, transformers, membench; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" 2>&1 | tee "$OUT/env.txt"
# the validation grid first (the table is what the session is for), then the gpu-marked tests
timeout 420 $PY benchmarks/gpu_validate.py --out "$OUT/gpu-validation.md" --json "$OUT/gpu-validation.json" \
    --budget-s 330 2>"$OUT/validate.log" | tail -n 20
echo "validation exit code: ${PIPESTATUS[0]}"
tail -n 30 "$OUT/validate.log"
timeout 150 $PY -m pytest -q -x -m gpu -p no:cacheprovider tests 2>&1 | tail -n 30 | tee "$OUT/gpu-tests.txt"
