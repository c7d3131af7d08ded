#!/usr/bin/env bash
# Creates target/bench-venv (ignored by git) with the Python packages the ONNX check and the
# benchmark harness use, from PyPI: onnxruntime and numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/bench-venv/bin/python ] || python3 -m venv target/bench-venv
target/bench-venv/bin/pip install --quiet --disable-pip-version-check onnxruntime==1.32.0 numpy==2.4.6
target/bench-venv/bin/python -c "import onnxruntime, numpy; print('onnxruntime', onnxruntime.__version__, 'numpy', numpy.__version__)"
