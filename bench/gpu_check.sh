#!/usr/bin/env bash
# The GPU checks, as one run on a CUDA machine whose python3 already has torch (and, for the
# callback tests, lightning and transformers). Pure-Python dependencies that machine lacks come from
# wheels in .whl/ (python3 -m pip download ... -d .whl "pydantic>=2.7,<3" google-crc32c).
#   OUT=/some/dir bash bench/gpu_check.sh
# Writes $OUT/checkpoint_speed_gpu.json (the benchmark) and $OUT/gpu_tests.txt (pytest -k torch/callbacks).
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/spotdeps .whl/*.whl 2>&1 | tail -2
  export PYTHONPATH=/tmp/spotdeps:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
# Write where the disk is (not a RAM file system).
DIR=""
for cand in /var/tmp "$PWD" /root /tmp; do
  fs=$(findmnt -n -o FSTYPE --target "$cand" 2>/dev/null || echo "?")
  echo "candidate $cand: $fs"
  if [ -z "$DIR" ] && [ "$fs" != tmpfs ] && [ "$fs" != ramfs ]; then DIR=$cand/ckpt-bench; fi
done
DIR=${DIR:-/var/tmp/ckpt-bench}
df -h "$(dirname "$DIR")"
echo "writing to $DIR"
timeout 420 python3 bench/checkpoint_speed.py --device cuda --adamw-params 1.08e9 --dir "$DIR" \
  --out "$OUT/checkpoint_speed_gpu.json" > "$OUT/bench_stdout.txt" 2> "$OUT/bench_stderr.txt"
echo "bench rc=$?"
tail -c 1500 "$OUT/bench_stderr.txt"
rm -rf "$DIR"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); a=d['async_checkpointer']; print({k: a[k] for k in ('stall_first_s','stall_steady_s','stall_host_steady_s','durable_s','gb_per_s','fraction_of_raw_disk','durable_vs_size_over_raw')}); print('raw', d['raw_disk']); print('torch_save', d.get('torch_save')); print('dcp', d.get('dcp_async_save')); print('emergency', d.get('emergency_save'))" "$OUT/checkpoint_speed_gpu.json"
export SPOT_TEST_DEVICE=cuda CUBLAS_WORKSPACE_CONFIG=:4096:8
timeout 150 python3 -m pytest -q -p no:cacheprovider -k "torch or callbacks" \
  tests/unit/test_torch_checkpoint.py tests/unit/test_train_callbacks_frameworks.py \
  tests/unit/test_async_checkpoint.py tests/integration/test_torch_train_resume.py \
  > "$OUT/gpu_tests.txt" 2>&1
echo "pytest rc=$?"
tail -25 "$OUT/gpu_tests.txt"
