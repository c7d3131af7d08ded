#!/usr/bin/env bash
# Type-checks the library and the CLI with the GPU back ends (`--features cuda,wgpu`), the way
# they would be built on a GPU machine. burn's CUDA back end (cubecl-cuda) has a build
# dependency, tracel-llvm-bundler, that downloads a prebuilt LLVM at build time; this
# workplace reaches only package registries, so the download is skipped with DOCS_RS=1 (the
# switch that crate provides for documentation builds). That is enough for a check, which links
# nothing; a real CUDA build needs a machine that can fetch it. wgpu needs no such step.
#
#   scripts/check-gpu-features.sh     # about 11 min from scratch on 2 cores (.ci/run ends with it)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo check --locked --features wgpu --lib --bins
DOCS_RS=1 cargo check --locked --features cuda,wgpu --lib --bins
echo "cuda and wgpu features: the library and the CLI type-check"
