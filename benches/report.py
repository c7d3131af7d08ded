"""Turns one benches/run.sh result folder into the Markdown table appended to docs/benchmarks.md:
absolute figures, achieved GFLOP/s against this machine's fp32 peak, and oncolens' ratio against
each peer (above 1: oncolens is faster)."""

import datetime
import glob
import json
import os
import platform
import subprocess
import sys

NETS = ["paper-cnn", "resnet-fine"]
STACKS = ["oncolens", "oncolens-int8", "torch", "torch-channels-last", "keras", "ort", "ort-int8"]
PEERS = ["torch", "torch-channels-last", "keras", "ort", "ort-int8"]


def load(folder):
    results = {}
    for path in glob.glob(os.path.join(folder, "*.json")):
        name = os.path.basename(path)[:-5]
        for net in NETS:
            if name.startswith(net + "-"):
                mode, stack = name[len(net) + 1:].split("-", 1)
                with open(path) as f:
                    results[(net, mode, stack)] = json.load(f)
    return results


def machine():
    model, mhz = platform.processor() or "?", None
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    mhz = float(line.split(":")[1])
                    break
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    cores = os.cpu_count()
    # Two 256-bit FMA pipes per core (AVX2; Zen 4 runs AVX-512 on the same two 256-bit pipes):
    # 2 pipes x 8 lanes x 2 flops per cycle.
    peak = cores * 2 * 8 * 2 * (mhz or 0) / 1e3
    isa = "AVX-512" if "avx512f" in flags else "AVX2"
    return model, cores, mhz, isa, peak


def fmt(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"


def main():
    folder = sys.argv[1]
    r = load(folder)
    model, cores, mhz, isa, peak = machine()
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"## Framework benchmark, {today}")
    print()
    print(f"Machine: {model}, {cores} cores, {isa}, {fmt(mhz, 0)} MHz; fp32 peak "
          f"{cores} x 2 FMA pipes x 8 lanes x 2 flops x clock = **{fmt(peak, 0)} GFLOP/s**. "
          f"Command: `benches/run.sh` (raw JSON: `{folder}`). Ratios are oncolens' speed over the "
          "peer's (above 1: oncolens faster). Random input, batch 32 for training and throughput; "
          "latency is one image, input tensor to probabilities.")
    for net in NETS:
        fwd = None
        for stack in ("torch", "torch-channels-last"):
            fwd = fwd or r.get((net, "infer", stack), {}).get("forward_gflop")
        params = r.get((net, "train", "torch"), {}).get("params")
        print()
        print(f"### {net} ({fmt(params, 0)} parameters incl. BN statistics, checked equal in every "
              f"stack; {fmt(fwd, 2)} GFLOP forward, {fmt(fwd and 3 * fwd, 2)} GFLOP per training image)")
        print()
        print("| stack | train img/s | train GFLOP/s (% peak) | batch-1 median / p95 ms | "
              "batch-32 img/s | infer GFLOP/s (% peak) | peak RSS train / infer MiB |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for stack in STACKS:
            t, i = r.get((net, "train", stack)), r.get((net, "infer", stack))
            if not t and not i:
                continue
            name = (i or t)["framework"]
            if t and t.get("jit_compile"):
                name += " (XLA)"
            tr = t and t["train_images_per_s"]
            th = i and i["batch32_images_per_s"]
            tg = tr and fwd and 3 * fwd * tr
            ig = th and fwd and fwd * th
            pct = lambda g: f"{fmt(g)} ({fmt(100 * g / peak, 0)} %)" if g and peak else "-"
            print(f"| {name} | {fmt(tr)} | {pct(tg)} | "
                  f"{fmt(i and i['batch1_median_ms'])} / {fmt(i and i['batch1_p95_ms'])} | "
                  f"{fmt(th)} | {pct(ig)} | {fmt(t and t['peak_rss_mib'], 0)} / {fmt(i and i['peak_rss_mib'], 0)} |")
        o_t = r.get((net, "train", "oncolens"))
        ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"
        for ours in ("oncolens", "oncolens-int8"):
            o_i = r.get((net, "infer", ours))
            if not o_i:
                continue
            print()
            print(f"| {o_i['framework']} vs | training | batch-1 latency | batch-32 throughput | "
                  "memory (peer RSS / ours, infer) |")
            print("|---|---:|---:|---:|---:|")
            for stack in PEERS:
                t, i = r.get((net, "train", stack)), r.get((net, "infer", stack))
                if not t and not i:
                    continue
                train = ratio(o_t and o_t["train_images_per_s"], t and t["train_images_per_s"]) \
                    if ours == "oncolens" else "-"
                print(f"| {(i or t)['framework']} | {train} | "
                      f"{ratio(i and i['batch1_median_ms'], o_i['batch1_median_ms'])} | "
                      f"{ratio(o_i['batch32_images_per_s'], i and i['batch32_images_per_s'])} | "
                      f"{ratio(i and i['peak_rss_mib'], o_i['peak_rss_mib'])} |")

if __name__ == "__main__":
    main()
