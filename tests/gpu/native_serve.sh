#!/usr/bin/env bash
# GPU end-to-end check of the native engine served by hyperllamad (issue 7): the same greedy request
# through `hyperctl run`, /api/generate and /v1/completions, served once by the llama.cpp engine (CPU)
# and once by the native engine (GPU), must give the same text. Needs a float32 Llama GGUF (the tiny
# model `cargo run --release -p hyperllama-native --example llama_reference DIR` writes as
# DIR/tiny-f32.gguf): on F32 weights llama.cpp and the native engine agree token for token.
#   tests/gpu/native_serve.sh BIN_DIR MODEL.gguf     (BIN_DIR holds hyperllamad and hyperctl; run as root)
# Without an NVIDIA driver it prints SKIPPED and exits 0. Run it on the GPU machine (see notes/native-engine.md).
set -euo pipefail
BIN=${1:?usage: native_serve.sh BIN_DIR MODEL.gguf}
if ! ls /dev/nvidia0 >/dev/null 2>&1 && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "SKIPPED: tests/gpu/native_serve.sh: no NVIDIA GPU on this machine (run it on the GPU machine)"
    exit 0
fi
MODEL=${2:?usage: native_serve.sh BIN_DIR MODEL.gguf}
[ "$(id -u)" = 0 ] || { echo "run as root (the daemon drops to the hyperllama user)" >&2; exit 2; }
id -u hyperllama >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin hyperllama

hl=$(mktemp -d /var/tmp/hl-native-serve.XXXXXX); chmod 755 "$hl"
cp "$MODEL" "$hl/model.gguf"; chmod 644 "$hl/model.gguf"
printf '[http]\nlisten = ["127.0.0.1:18099"]\n' >"$hl/hyperllama.toml"
"$BIN/hyperllamad" --mode user --config "$hl/hyperllama.toml" --state-dir "$hl/state" --cache-dir "$hl/cache" \
    --runtime-dir "$hl/run" --user hyperllama --log-format text >"$hl/daemon.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
ctl=("$BIN/hyperctl" --host "$hl/run/control.sock")
for _ in $(seq 100); do "${ctl[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
printf 'FROM %s\nPARAMETER temperature 0\nPARAMETER repeat_penalty 1\nPARAMETER num_predict 32\n' "$hl/model.gguf" >"$hl/Modelfile"
"${ctl[@]}" create tiny -f "$hl/Modelfile" >/dev/null

answers() { # engine -> three answers, one per line (JSON strings)
    "${ctl[@]}" run tiny --engine "$1" --keepalive -1 "Hello" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().rstrip("\n")))'
    curl -sf http://127.0.0.1:18099/api/generate -d '{"model":"tiny","prompt":"Hello","raw":true,"stream":false,"options":{"temperature":0,"repeat_penalty":1,"num_predict":32}}' \
        | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["response"]))'
    curl -sf http://127.0.0.1:18099/v1/completions -d '{"model":"tiny","prompt":"Hello","max_tokens":32,"temperature":0}' \
        | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["choices"][0]["text"]))'
    "${ctl[@]}" ps | sed 1d
    "${ctl[@]}" stop tiny >/dev/null
}
cpu=$(answers llama.cpp)
gpu=$(answers native)
echo "llama.cpp (CPU):"; echo "$cpu"
echo "native (GPU):"; echo "$gpu"
ref=$(echo "$cpu" | sed -n 1p)
fail=0
for i in 1 2 3; do
    for got in "$(echo "$cpu" | sed -n ${i}p)" "$(echo "$gpu" | sed -n ${i}p)"; do
        [ "$got" = "$ref" ] || { echo "MISMATCH (answer $i): $got != $ref"; fail=1; }
    done
done
echo "$gpu" | grep -q 'native' || { echo "the native engine did not serve the model"; fail=1; }
[ $fail = 0 ] && echo "RESULT: PASS (hyperctl run, /api/generate, /v1/completions: native == llama.cpp)" || { echo "RESULT: FAIL"; tail -20 "$hl/daemon.log"; exit 1; }
