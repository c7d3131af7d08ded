#!/usr/bin/env bash
# Rebuilds the non-MRI set the input check is measured on (docs/explainability.md, "Input check"), under
# target/non-mri/ (ignored by git; none of these images is committed):
#   packages/  the sample images that matplotlib and scikit-image ship in their wheels (PyPI)
#   synthetic/ flat, noise, gradients, text-like, checkerboards, colour shapes (made here)
#   inverted/  20 real Testing slices with their intensities inverted
# Usage: scripts/non-mri-set.sh [DATA_ROOT]   (default ../shared/data/brain-tumor-mri)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/brain-tumor-mri}
OUT=target/non-mri
rm -rf "$OUT" && mkdir -p "$OUT/wheels" "$OUT/packages" "$OUT/synthetic" "$OUT/inverted"
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  matplotlib==3.11.2 scikit-image==0.26.0 -d "$OUT/wheels"
for whl in "$OUT"/wheels/*.whl; do
  python3 - "$whl" "$OUT/packages" <<'PY'
import sys, zipfile, os
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.lower().endswith((".png", ".jpg", ".jpeg")) and ("/sample_data/" in name or name.startswith("skimage/data/")):
            target = os.path.join(out, name.replace("/", "__"))
            with open(target, "wb") as f:
                f.write(z.read(name))
PY
done
cargo run --release --quiet --example non_mri_set -- "$OUT/synthetic" 10
if [ -d "$DATA/Testing" ]; then
  cargo run --release --quiet --example non_mri_set -- "$OUT/inverted" 0 --invert-from "$DATA/Testing" --invert 20
fi
find "$OUT" -path "$OUT/wheels" -prune -o -type f -print | wc -l
