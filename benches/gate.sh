#!/usr/bin/env bash
# The input gate's cost per image next to the classifier's, in one run (issue #14: the gate
# adds <= 5 ms per image on 2 cores). Prints JSON; docs/gate.md quotes it.
#
#   benches/gate.sh [N]      # N slices of Testing/glioma_tumor, batch 1 (default 200)
#
# A JSON array of two runs: with the int8 kernel this CPU runs best, then with the portable
# kernel (the one CPUs without AVX2 get), so that the kernels' ratio comes from the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${ONCOLENS_DATA:-../shared/data}
DIR="$DATA/brain-tumor-mri/Testing/glioma_tumor"
[ -d "$DIR" ] || { echo "$DIR is missing: the benchmark needs the shared data set" >&2; exit 1; }
cargo build --release --quiet --example gate_bench
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
echo "["
target/release/examples/gate_bench "$DIR" "${1:-200}"
echo ","
target/release/examples/gate_bench "$DIR" "${1:-200}" portable
echo "]"
