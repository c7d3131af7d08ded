#!/usr/bin/env bash
# The framework benchmark (issue #7): oncolens vs PyTorch (plain and channels-last) vs
# TensorFlow/Keras vs ONNX Runtime f32 and int8 (and oncolens' int8 engine) on the same CPU, back
# to back, for paper-cnn (the seed's network) and resnet-fine (the default model's network). Each
# measurement runs in its own process, so each peak RSS is that measurement's alone.
#
#   benches/run.sh            # full run, appends the table to docs/benchmarks.md
#   benches/run.sh --quick    # fewer repetitions, prints the table only (a smoke test)
#   benches/run.sh --int8     # inference only: the int8 engine, ONNX Runtime f32 and int8
#                             # (no PyTorch or TensorFlow install); prints the table only
#
# Installs the peers (about 7 GB, from PyPI; with --int8 only ONNX Runtime) into
# target/peer-venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
INT8=0
export TF_CPP_MIN_LOG_LEVEL=2  # TensorFlow's start-up chatter
[ "${1:-}" = "--quick" ] && QUICK=1
[ "${1:-}" = "--int8" ] && INT8=1
V=target/peer-venv
[ -x "$V/bin/python" ] || python3 -m venv "$V"
ORT=(onnxruntime==1.32.0 onnx==1.20.0 sympy==1.14.0 numpy==2.4.6)
if [ $INT8 = 1 ]; then
  "$V/bin/pip" install --quiet --disable-pip-version-check "${ORT[@]}"
else
  "$V/bin/pip" install --quiet --disable-pip-version-check torch==2.15.0 tensorflow-cpu==2.21.0 \
    keras==3.15.1 "${ORT[@]}"
fi
cargo build --release --quiet --example bench
OUT=target/bench/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
if [ $QUICK = 1 ]; then
  REPS=(--train-steps 1 --latency-runs 5 --batch-runs 1)
else
  REPS=(--train-steps 8 --latency-runs 50 --batch-runs 4)
fi
ONC=target/release/examples/bench
PY="$V/bin/python benches/peers.py"
for net in paper-cnn resnet-fine; do
  $ONC --net "$net" --mode onnx --onnx "$OUT/$net.onnx" > /dev/null
  if [ $INT8 = 0 ]; then
    for mode in train infer; do
      echo "== $net $mode" >&2
      $ONC --net "$net" --mode "$mode" "${REPS[@]}" > "$OUT/$net-$mode-oncolens.json"
      for fw in torch torch-channels-last keras; do
        $PY --framework "$fw" --net "$net" --mode "$mode" "${REPS[@]}" > "$OUT/$net-$mode-$fw.json"
      done
    done
  fi
  echo "== $net int8" >&2
  $PY --framework ort --net "$net" --mode infer --onnx "$OUT/$net.onnx" "${REPS[@]}" \
    > "$OUT/$net-infer-ort.json"
  # ONNX Runtime's own int8 (static QDQ quantisation of the same file), the int8 engine's peer.
  $PY --framework ort-int8 --net "$net" --mode infer --onnx "$OUT/$net.onnx" "${REPS[@]}" \
    > "$OUT/$net-infer-ort-int8.json"
  $ONC --net "$net" --mode infer-int8 "${REPS[@]}" > "$OUT/$net-infer-oncolens-int8.json"
done
"$V/bin/python" benches/report.py "$OUT" > "$OUT/report.md"
cat "$OUT/report.md"
if [ $QUICK = 0 ] && [ $INT8 = 0 ]; then
  { echo; cat "$OUT/report.md"; } >> docs/benchmarks.md
  echo "appended to docs/benchmarks.md (raw results: $OUT)" >&2
fi
