"""Runs an ONNX file exported by `oncolens export --onnx F --reference-images DIR` in ONNX Runtime
and compares its probabilities with oncolens's on the same network inputs (written beside F).
Prints the max abs difference; exits 1 above the tolerance (default 1e-4).

    target/bench-venv/bin/python benches/onnx_check.py F [TOLERANCE]
"""
import json
import sys

import numpy as np
import onnxruntime as ort

path = sys.argv[1]
tolerance = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-4
ref = json.load(open(path + ".reference.json"))
inputs = np.fromfile(path + ".input.f32", dtype="<f4").reshape(ref["input_shape"])
expected = np.fromfile(path + ".probabilities.f32", dtype="<f4").reshape(ref["count"], -1)

session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
got = np.concatenate([session.run(None, {"input": inputs[i : i + 1]})[0] for i in range(len(inputs))])
batch = session.run(None, {"input": inputs})[0]
diff = float(np.abs(got - expected).max())
batch_diff = float(np.abs(batch - expected).max())
agree = int((got.argmax(1) == expected.argmax(1)).sum())
print(
    f"{path}: {ref['count']} images, max |p_onnxruntime - p_oncolens| = {diff:.2e} "
    f"(batch of {len(inputs)}: {batch_diff:.2e}); same top class for {agree}/{ref['count']} "
    f"(onnxruntime {ort.__version__})"
)
sys.exit(0 if max(diff, batch_diff) <= tolerance else 1)
