"""The peers' side of the framework benchmark (benches/run.sh): PyTorch, TensorFlow/Keras and ONNX
Runtime on the same networks as oncolens, timed the same way; prints one JSON object.

The networks are built layer for layer as oncolens builds them (src/model/paper_cnn.rs,
src/model/resnet.rs) and their parameter counts are checked against oncolens' (BN running
statistics included, as burn counts them): a mismatch stops the run. ONNX Runtime runs the file
`oncolens export` writes, so it is oncolens' network by construction.

    python benches/peers.py --framework torch --net paper-cnn --mode train
"""

import argparse
import json
import os
import resource
import time

import numpy as np

WIDTHS = [32, 64, 64, 64, 128, 128, 128, 128, 256]
POOL_AFTER = {1, 3, 6, 8}
STEM_WIDTH = 24
STAGE_WIDTHS = [32, 64, 128, 256]
BATCH = 32
CLASSES = 4
# Parameters as burn counts them (learnable + batch-norm running mean and variance).
EXPECTED_PARAMS = {"paper-cnn": 4_447_044, "resnet-fine": 1_228_220}
CHANNELS = {"paper-cnn": 3, "resnet-fine": 1}


def torch_net(net, size):
    import torch.nn as nn

    if net == "paper-cnn":
        layers, c_in, side = [], CHANNELS[net], size
        for i, w in enumerate(WIDTHS):
            layers += [nn.Conv2d(c_in, w, 3), nn.ReLU()]
            side -= 2
            if i == 3:
                layers.append(nn.Dropout(0.3))
            if i in POOL_AFTER:
                layers += [nn.MaxPool2d(2), nn.Dropout(0.3)]
                side //= 2
            c_in = w
        layers += [nn.Flatten(), nn.Linear(side * side * 256, 512), nn.ReLU(),
                   nn.Linear(512, 512), nn.ReLU(), nn.Dropout(0.3), nn.Linear(512, CLASSES)]
        return nn.Sequential(*layers)

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU()
            self.shortcut = None
            if stride != 1 or c_in != c_out:
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                              nn.BatchNorm2d(c_out))

        def forward(self, x):
            identity = x if self.shortcut is None else self.shortcut(x)
            y = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(y)) + identity)

    layers = [nn.Conv2d(CHANNELS[net], STEM_WIDTH, 3, 2, 1, bias=False),
              nn.BatchNorm2d(STEM_WIDTH), nn.ReLU()]
    c_in = STEM_WIDTH
    for i, w in enumerate(STAGE_WIDTHS):
        layers.append(Block(c_in, w, 1 if i == len(STAGE_WIDTHS) - 1 else 2))
        c_in = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(c_in, CLASSES)]
    return nn.Sequential(*layers)


def torch_params(model):
    import torch.nn as nn

    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n += m.running_mean.numel() + m.running_var.numel()
    return n


def torch_forward_flops(model, size):
    """Multiply-adds of convolutions and dense layers, x2, for one image."""
    import torch
    import torch.nn as nn

    flops = [0]

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            flops[0] += 2 * k * out.numel()
        elif isinstance(m, nn.Linear):
            flops[0] += 2 * m.in_features * m.out_features

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.inference_mode():
        model(torch.zeros(1, next(model.parameters()).shape[1], size, size))
    for h in hooks:
        h.remove()
    return flops[0]


def keras_net(net, size):
    import keras
    from keras import layers as L

    x = inp = keras.Input((size, size, CHANNELS[net]))
    if net == "paper-cnn":
        for i, w in enumerate(WIDTHS):
            x = L.Conv2D(w, 3, activation="relu")(x)
            if i == 3:
                x = L.Dropout(0.3)(x)
            if i in POOL_AFTER:
                x = L.Dropout(0.3)(L.MaxPooling2D(2)(x))
        x = L.Flatten()(x)
        x = L.Dense(512, activation="relu")(x)
        x = L.Dropout(0.3)(L.Dense(512, activation="relu")(x))
        return keras.Model(inp, L.Dense(CLASSES)(x))

    def bn(t):
        return L.BatchNormalization(epsilon=1e-5, momentum=0.9)(t)

    x = L.ReLU()(bn(L.Conv2D(STEM_WIDTH, 3, 2, padding="same", use_bias=False)(x)))
    c_in = STEM_WIDTH
    for i, w in enumerate(STAGE_WIDTHS):
        stride = 1 if i == len(STAGE_WIDTHS) - 1 else 2
        identity = x
        if stride != 1 or c_in != w:
            identity = bn(L.Conv2D(w, 1, stride, use_bias=False)(x))
        y = L.ReLU()(bn(L.Conv2D(w, 3, stride, padding="same", use_bias=False)(x)))
        y = bn(L.Conv2D(w, 3, 1, padding="same", use_bias=False)(y))
        x = L.ReLU()(L.Add()([y, identity]))
        c_in = w
    x = L.Dropout(0.2)(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, L.Dense(CLASSES)(x))


def percentile(sorted_ms, q):
    return sorted_ms[min(len(sorted_ms) - 1, round(q * (len(sorted_ms) - 1)))]


def time_inference(run, one, batch, latency_runs, batch_runs):
    for _ in range(5):
        run(one)
    ms = []
    for _ in range(latency_runs):
        t = time.perf_counter()
        p = run(one)
        ms.append((time.perf_counter() - t) * 1e3)
        assert p.shape == (1, CLASSES)
    ms.sort()
    run(batch)
    t = time.perf_counter()
    for _ in range(batch_runs):
        run(batch)
    seconds = time.perf_counter() - t
    return {"batch1_median_ms": percentile(ms, 0.5), "batch1_p95_ms": percentile(ms, 0.95),
            "latency_runs": latency_runs, "batch32_images_per_s": batch_runs * BATCH / seconds}


def check_params(net, n):
    if n != EXPECTED_PARAMS[net]:
        raise SystemExit(f"{net}: {n} parameters, oncolens has {EXPECTED_PARAMS[net]}: not the same network")


def run_torch(a, channels_last):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(1)
    model = torch_net(a.net, a.input_size)
    n = torch_params(model)
    check_params(a.net, n)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    c = CHANNELS[a.net]
    rng = np.random.default_rng(1)

    def tensor(b):
        x = torch.from_numpy(rng.uniform(-1.7, 1.7, (b, c, a.input_size, a.input_size)).astype(np.float32))
        return x.contiguous(memory_format=fmt)

    out = {"framework": f"PyTorch {torch.__version__.split('+')[0]}" + (" channels-last" if channels_last else ""),
           "params": n, "threads": torch.get_num_threads(),
           "forward_gflop": torch_forward_flops(torch_net(a.net, a.input_size), a.input_size) / 1e9}
    if a.mode == "train":
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x, y = tensor(BATCH), torch.arange(BATCH) % CLASSES

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss.item()

        for _ in range(2):
            step()
        t = time.perf_counter()
        for _ in range(a.train_steps):
            step()
        out["train_images_per_s"] = a.train_steps * BATCH / (time.perf_counter() - t)
        out["train_steps"] = a.train_steps
    else:
        model.eval()

        def run(x):
            with torch.inference_mode():
                return torch.softmax(model(x), 1).numpy()

        out.update(time_inference(run, tensor(1), tensor(BATCH), a.latency_runs, a.batch_runs))
    return out


def run_keras(a):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    model = keras_net(a.net, a.input_size)
    check_params(a.net, model.count_params())
    c = CHANNELS[a.net]
    rng = np.random.default_rng(1)

    def array(b):
        return rng.uniform(-1.7, 1.7, (b, a.input_size, a.input_size, c)).astype(np.float32)

    out = {"framework": f"TensorFlow {tf.__version__} / Keras {keras.__version__}",
           "params": model.count_params(), "threads": os.cpu_count()}
    if a.mode == "train":
        # The seed's way: compile with Adam and sparse cross-entropy, then fit on batches.
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x, y = array(BATCH), np.arange(BATCH) % CLASSES
        for _ in range(2):
            model.train_on_batch(x, y)
        t = time.perf_counter()
        for _ in range(a.train_steps):
            model.train_on_batch(x, y)
        out["train_images_per_s"] = a.train_steps * BATCH / (time.perf_counter() - t)
        out["train_steps"] = a.train_steps
        out["jit_compile"] = bool(model.jit_compile)
    else:
        forward = tf.function(lambda x: tf.nn.softmax(model(x, training=False)))

        def run(x):
            return forward(tf.constant(x)).numpy()

        out.update(time_inference(run, array(1), array(BATCH), a.latency_runs, a.batch_runs))
    return out


def run_ort(a, int8=False):
    """ONNX Runtime on oncolens' exported model; with `int8`, first ONNX Runtime's own static
    quantisation (QDQ, int8 weights per channel, uint8 activations), calibrated on as many random
    inputs as oncolens' int8 engine is (4), so both int8 rows do the same work. uint8
    activations are ONNX Runtime's faster choice on x86: on 2026-12-02, int8 activations gave
    3.5 ms per resnet-fine image, uint8 ones 0.7-1.0 ms (paper-cnn: 6.6 against 4.4-6.6 ms)."""
    import onnxruntime as ort

    rng = np.random.default_rng(1)

    def array(b):  # oncolens' ONNX takes the grey slice and repeats it where needed
        return rng.uniform(-1.7, 1.7, (b, 1, a.input_size, a.input_size)).astype(np.float32)

    model = a.onnx
    if int8:
        from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process

        stem = os.path.splitext(a.onnx)[0]
        prepared, model = stem + "-prepared.onnx", stem + "-int8.onnx"
        quant_pre_process(a.onnx, prepared)
        name = ort.InferenceSession(prepared, providers=["CPUExecutionProvider"]).get_inputs()[0].name

        class Calibration(CalibrationDataReader):
            def __init__(self):
                self.feeds = iter([{name: array(1)} for _ in range(4)])

            def get_next(self):
                return next(self.feeds, None)

        quantize_static(prepared, model, Calibration(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = os.cpu_count()
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x):
        return sess.run(None, {name: x})[0]

    label = "ONNX Runtime int8 (static QDQ)" if int8 else "ONNX Runtime"
    out = {"framework": f"{label} {ort.__version__}", "threads": os.cpu_count()}
    if int8:
        out["int8_model_bytes"] = os.path.getsize(model)
    out.update(time_inference(run, array(1), array(BATCH), a.latency_runs, a.batch_runs))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--framework", choices=["torch", "torch-channels-last", "keras", "ort", "ort-int8"],
                   required=True)
    p.add_argument("--net", choices=sorted(EXPECTED_PARAMS), required=True)
    p.add_argument("--mode", choices=["train", "infer"], required=True)
    p.add_argument("--input-size", type=int, default=150)
    p.add_argument("--train-steps", type=int, default=8)
    p.add_argument("--latency-runs", type=int, default=50)
    p.add_argument("--batch-runs", type=int, default=4)
    p.add_argument("--onnx", help="the model file for --framework ort and ort-int8")
    a = p.parse_args()
    if a.framework in ("ort", "ort-int8"):
        out = run_ort(a, int8=a.framework == "ort-int8")
    elif a.framework == "keras":
        out = run_keras(a)
    else:
        out = run_torch(a, a.framework == "torch-channels-last")
    out["net"] = a.net
    out["mode"] = a.mode
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


if __name__ == "__main__":
    main()
