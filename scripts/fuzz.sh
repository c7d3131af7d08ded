#!/usr/bin/env bash
# Runs the fuzz targets (docs/fuzzing.md): every target for 10 minutes, one after the other, or
# one target for a given number of seconds: scripts/fuzz.sh [TARGET [SECONDS]].
# Needs cargo-fuzz (cargo install cargo-fuzz); builds without a sanitizer on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
targets=("${1:-upload}")
[ $# -eq 0 ] && targets=(upload decode deidentify)
seconds="${2:-600}"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  # Seeds: the committed corpus, and for the DICOM targets the shared DICOM files.
  cp -n corpus-ci/"$t"/* "corpus/$t/" 2>/dev/null || true
  if [ "$t" != upload ] && [ -d ../../shared/data/dicom ]; then
    find ../../shared/data/dicom -name '*.dcm' -size -64k -exec cp -n {} "corpus/$t/" \;
  fi
  cargo fuzz run -s none --release "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -timeout=10 -print_final_stats=1 2>&1 | tee "/tmp/oncolens-fuzz-$t.log" | grep -E "^(Done|stat::|==|SUMMARY)" || true
done
