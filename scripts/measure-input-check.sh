#!/usr/bin/env bash
# Measures the input check (docs/explainability.md, "Input check"): the share of real MRI slices (the whole
# Testing folder) called "not a brain MRI slice", and the share of the non-MRI set
# (scripts/non-mri-set.sh) that is refused, per source. Uses the release build.
# Usage: scripts/measure-input-check.sh [MODEL_DIR]   (default: the bundled model)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/brain-tumor-mri}
[ -d target/non-mri/synthetic ] || scripts/non-mri-set.sh "$DATA"
cargo build --release --quiet
MODEL_ARGS=()
[ $# -ge 1 ] && MODEL_ARGS=(--model "$1")
BIN=target/release/oncolens
$BIN predict "${MODEL_ARGS[@]}" --format csv "$DATA/Testing" > target/non-mri/testing.csv 2>/dev/null
$BIN predict "${MODEL_ARGS[@]}" --format csv target/non-mri/packages target/non-mri/synthetic \
  target/non-mri/inverted > target/non-mri/non-mri.csv 2>/dev/null
python3 - <<'PY'
import csv, collections, re
def rows(f):
    return [r for r in csv.DictReader(open(f)) if not r["error"]]
mri = rows("target/non-mri/testing.csv")
bad = [r for r in mri if r["verdict"] == "not_brain_mri"]
print(f"real MRI (Testing, {len(mri)} slices): {len(bad)} wrongly refused = {100*len(bad)/len(mri):.1f} %")
for r in bad:
    print(f"   {r['file'].split('Testing/')[-1]}: {r['not_mri_reasons']}")
verdicts = collections.Counter(r["verdict"] for r in mri)
print(f"   verdicts on real MRI: {dict(verdicts)}")
non = rows("target/non-mri/non-mri.csv")
def group(f):
    name = f.split("/")[-1]
    if "/packages/" in f: return "package sample images (matplotlib, scikit-image)"
    if "/inverted/" in f: return "inverted real slices"
    return "synthetic " + re.sub(r"^synthetic-(.*)-\d+\.png$", r"\1", name)
by = collections.defaultdict(list)
for r in non: by[group(r["file"])].append(r)
total_ref = sum(r["verdict"] == "not_brain_mri" for r in non)
print(f"non-MRI ({len(non)} images): {total_ref} refused = {100*total_ref/len(non):.1f} %")
for g in sorted(by):
    rs = by[g]; ref = sum(r["verdict"] == "not_brain_mri" for r in rs)
    print(f"   {g}: {ref}/{len(rs)}")
for r in non:
    if r["verdict"] != "not_brain_mri":
        print(f"   accepted: {r['file'].split('non-mri/')[-1]} -> {r['verdict']} {r['class']} {float(r['confidence']):.2f}")
PY
