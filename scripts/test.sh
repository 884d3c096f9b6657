#!/usr/bin/env bash
# Every test: formatting, lints, unit and end-to-end tests (real daemon, real llama.cpp, real
# SQLite, throwaway users when root). GPU tests report themselves skipped without a CUDA driver;
# run them on a GPU machine with scripts/gpu-tests.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build_deps
cd "$REPO"
log "cargo fmt --check"
cargo fmt --all --check
log "building (release, tests included)"
cargo build --release --locked --workspace --all-targets
log "cargo clippy"
cargo clippy --release --locked --workspace --all-targets -- -D warnings
log "cargo test"
# Model files the tests share (downloaded once, cached in .cache/).
export HYPERLLAMA_TEST_GEMMA="$(fetch_gemma)"
# The official ollama and openai Python clients, pinned; tests/http_clients.rs runs their pytest
# suite (tests/clients/) against the real daemon as part of cargo test.
log "installing the Python test clients"
"$(venv)/bin/pip" install -q -r tests/clients/requirements.txt
export HYPERLLAMA_TEST_PYTHON="$REPO/.venv/bin/python"
# NVRTC alone (no driver, no GPU) from PyPI, so the kernel sources are compiled for every
# supported architecture here too (kernels/tests/cache.rs); running them needs the GPU machine.
"$(venv)/bin/pip" install -q nvidia-cuda-nvrtc-cu12==12.9.86
export HYPERLLAMA_NVRTC_PATH="$("$REPO/.venv/bin/python" -c 'import nvidia.cuda_nvrtc, os; print(os.path.join(nvidia.cuda_nvrtc.__path__[0], "lib"))')"
# Served engines for tests/engines.rs, in cached virtualenvs (.cache/engines/{max,vllm}).
export HYPERLLAMA_TEST_MAX_VENV="$(max_engine)"
export HYPERLLAMA_TEST_VLLM_VENV="$(vllm_engine)"
export HYPERLLAMA_SKIP_LOG="$CACHE/skipped.log"
rm -f "$HYPERLLAMA_SKIP_LOG"
status=0
cargo test --release --locked --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-2}" || status=$?
# The native engine served end to end on a GPU (skipped, with a line in the skip log, without one).
if ls /dev/nvidia0 >/dev/null 2>&1; then
    model="$CACHE/native-ref/tiny-f32.gguf"
    [ -f "$model" ] || cargo run --release --locked -p hyperllama-native --example llama_reference -- "$CACHE/native-ref"
    bash tests/gpu/native_serve.sh "$REPO/target/release" "$model" || status=1
else
    echo "tests/gpu/native_serve.sh: no NVIDIA GPU here; run it on the GPU machine" >>"$HYPERLLAMA_SKIP_LOG"
fi
# The .deb/.rpm installed in a booted Debian (systemd-nspawn; as root, else it reports itself skipped).
# It packages the release binaries built above (HYPERLLAMA_PKG_NO_BUILD=1).
log "install test (tests/install/run.sh)"
HYPERLLAMA_PKG_NO_BUILD=1 bash tests/install/run.sh || status=1
if [ -s "$HYPERLLAMA_SKIP_LOG" ]; then
    log "skipped tests (each says why):"
    sort -u "$HYPERLLAMA_SKIP_LOG" >&2
fi
exit "$status"
