#!/usr/bin/env bash
# packaging/build.sh: build the HyperLlama packages into target/packages/:
#   hyperllama_<version>-1_<arch>.deb          (cargo-deb; daemon, hyperctl, units, config, SELinux .pp)
#   hyperllama-<version>-1.<arch>.rpm          (cargo-generate-rpm)
#   hyperllama-selinux-<version>-1.noarch.rpm  (cargo-generate-rpm, second run: the policy module)
#
# Runs non-interactively as root on a clean Debian 12 (CI=true is fine): installs the Debian packages it
# needs when missing, installs pinned cargo-deb / cargo-generate-rpm into $CARGO_HOME/bin when missing
# (they stay there for later runs), builds release binaries, builds the SELinux module in a temp dir,
# then packages from a throwaway copy of the workspace manifests with packaging/daemon-metadata.toml
# appended to daemon/Cargo.toml (cargo-deb only reads metadata from the crate's Cargo.toml).
#
# Environment:
#   HYPERLLAMA_PKG_NO_BUILD=1  don't run cargo build; package the binaries already in target/release
#   HYPERLLAMA_PKG_NO_APT=1    never apt-get install; fail if a tool is missing
#   HYPERLLAMA_PKG_NATIVE=1    build for this machine's CPU in <workspace>/target, as .cargo/config.toml
#                              does for every other build; by default packages are built to run on any
#                              x86-64-v3 (AVX2) CPU, in <workspace>/target/portable
#   CARGO_TARGET_DIR           honoured (default: <workspace>/target or <workspace>/target/portable);
#                              the packages go to $CARGO_TARGET_DIR/packages (default target/packages)
set -euo pipefail

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${CARGO_TARGET_DIR:-$ROOT/target}/packages
case "$OUT" in /*) ;; *) OUT=$ROOT/$OUT ;; esac
if [ "${HYPERLLAMA_PKG_NO_BUILD:-0}" != 1 ] && [ "${HYPERLLAMA_PKG_NATIVE:-0}" != 1 ]; then
	# A package runs on other machines: C and C++ (llama.cpp) for any AVX2 CPU, not -march=native.
	# Values in the environment win over .cargo/config.toml's.
	export CFLAGS_x86_64_unknown_linux_gnu=-march=x86-64-v3 CXXFLAGS_x86_64_unknown_linux_gnu=-march=x86-64-v3
	export GGML_HYPERLLAMA_MARCH=x86-64-v3
	export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/portable}
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
STAGE=$TARGET_DIR/release/packaging
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'packaging/build.sh: %s\n' "$*" >&2; exit 1; }

TMP=$(mktemp -d /tmp/hyperllama-pkg.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# --- 1. Debian packages ------------------------------------------------------------------------------
need_pkgs=(selinux-policy-dev dpkg-dev binutils rpm)
if [ "${HYPERLLAMA_PKG_NO_BUILD:-0}" != 1 ]; then
	# llama-cpp-sys-2 builds llama.cpp with cmake; bindgen needs libclang and its headers.
	need_pkgs+=(build-essential cmake libclang1-14 libclang-common-14-dev)
fi
if command -v dpkg-query >/dev/null 2>&1; then
	missing=()
	for p in "${need_pkgs[@]}"; do
		[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = 'install ok installed' ] || missing+=("$p")
	done
	if [ "${#missing[@]}" -gt 0 ]; then
		[ "${HYPERLLAMA_PKG_NO_APT:-0}" != 1 ] || die "missing Debian packages: ${missing[*]}"
		[ "$(id -u)" = 0 ] || die "missing Debian packages (${missing[*]}); run as root or install them"
		log "apt-get install ${missing[*]}"
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
fi
for c in cargo make checkmodule semodule_package strip; do
	command -v "$c" >/dev/null 2>&1 || die "'$c' not found"
done
[ -f /usr/share/selinux/devel/Makefile ] || die "/usr/share/selinux/devel/Makefile missing (selinux-policy-dev)"

# --- 2. cargo-deb and cargo-generate-rpm (pinned, cached in $CARGO_HOME/bin) --------------------------
ensure_tool() { # crate version subcommand
	if [ "$(cargo "$3" --version 2>/dev/null)" = "$1 $2" ]; then return 0; fi
	log "cargo install --locked $1@$2"
	cargo install --locked --quiet "$1@$2"
}
ensure_tool cargo-deb "$CARGO_DEB_VERSION" deb
ensure_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION" generate-rpm

# --- 3. release binaries -------------------------------------------------------------------------------
if [ "${HYPERLLAMA_PKG_NO_BUILD:-0}" != 1 ]; then
	log "cargo build --release -p hyperllamad -p hyperctl"
	cargo build --release --locked -p hyperllamad -p hyperctl
fi
for b in hyperllamad hyperctl; do
	[ -x "$TARGET_DIR/release/$b" ] || die "$TARGET_DIR/release/$b missing (build first, or unset HYPERLLAMA_PKG_NO_BUILD)"
done
mkdir -p "$STAGE" "$OUT"
# cargo-generate-rpm doesn't strip; the release profile keeps line tables. Strip copies for the rpm
# (cargo-deb strips its own copies the same way).
for b in hyperllamad hyperctl; do
	strip --strip-unneeded --remove-section=.comment --remove-section=.note \
		-o "$STAGE/$b" "$TARGET_DIR/release/$b"
done

# --- 4. SELinux module (built in a temp dir: nothing is written into selinux/) ------------------------
log "building hyperllama.pp"
mkdir "$TMP/selinux"
cp selinux/hyperllama.te selinux/hyperllama.if selinux/hyperllama.fc "$TMP/selinux/"
make -C "$TMP/selinux" -f /usr/share/selinux/devel/Makefile hyperllama.pp >"$TMP/selinux.log" 2>&1 \
	|| { cat "$TMP/selinux.log" >&2; die "SELinux module build failed"; }
install -m 0644 "$TMP/selinux/hyperllama.pp" "$STAGE/hyperllama.pp"

# --- 5. throwaway copy of the workspace with the package metadata ---------------------------------------
[ -f packaging/hyperllama.toml ] || die "packaging/hyperllama.toml (the example config, shipped as /etc/hyperllama/hyperllama.toml) is missing"
WORK=$TMP/ws
mkdir "$WORK"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	# Tracked and untracked-but-not-ignored files (no target/, .venv, caches).
	git -C "$ROOT" ls-files -z -c -o --exclude-standard \
		| tar -C "$ROOT" --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$WORK" -xf -
else
	tar -C "$ROOT" --exclude=./target --exclude=./.git --exclude=./.venv --exclude=./.cache -cf - . \
		| tar -C "$WORK" -xf -
fi
# Drop any [package.metadata.deb*] / [package.metadata.generate-rpm*] tables already pasted into
# daemon/Cargo.toml, then append packaging/daemon-metadata.toml: packaging/ stays the one source.
# A header is a line that is only [table] or [[array]] (array values like ["a", "b"], are not).
awk '
	/^[[:space:]]*\[\[?[[:space:]]*[A-Za-z0-9_][^=]*\]\]?[[:space:]]*(#.*)?$/ {
		skip = ($0 ~ /^[[:space:]]*\[[[:space:]]*package\.metadata\.(deb|generate-rpm)[[:space:]]*([].]|$)/)
	}
	!skip
' "$ROOT/daemon/Cargo.toml" >"$WORK/daemon/Cargo.toml"
{ echo; cat packaging/daemon-metadata.toml; } >>"$WORK/daemon/Cargo.toml"
if [ ! -f "$WORK/README.md" ]; then
	echo "warning: README.md missing; packaging a placeholder" >&2
	printf '# HyperLlama\n\nThe README was not written when this package was built.\n' >"$WORK/README.md"
fi

# --- 6. packages ---------------------------------------------------------------------------------------
rm -f "$OUT"/hyperllama_*.deb "$OUT"/hyperllama-*.rpm
log "cargo deb"
(cd "$WORK" && CARGO_TARGET_DIR="$TARGET_DIR" cargo deb -p hyperllamad --no-build --strip --quiet -o "$OUT/")
log "cargo generate-rpm (hyperllama)"
(cd "$WORK" && CARGO_TARGET_DIR="$TARGET_DIR" cargo generate-rpm -p daemon --auto-req builtin \
	--metadata-overwrite "$WORK/packaging/rpm/hyperllama.toml" -o "$OUT/")
log "cargo generate-rpm (hyperllama-selinux)"
(cd "$WORK" && CARGO_TARGET_DIR="$TARGET_DIR" cargo generate-rpm -p daemon --auto-req disabled -a noarch \
	--metadata-overwrite "$WORK/packaging/rpm/hyperllama-selinux.toml" -o "$OUT/")

# --- 7. checks -----------------------------------------------------------------------------------------
deb=$(ls "$OUT"/hyperllama_*.deb)
rpm_main=$(ls "$OUT"/hyperllama-[0-9]*.rpm)
rpm_se=$(ls "$OUT"/hyperllama-selinux-*.rpm)
# Outputs are captured first: `cmd | grep -q` under pipefail fails when grep exits early (SIGPIPE).
has() { grep -q -- "$2" <<<"$1"; }
has "$(dpkg-deb -f "$deb" Depends)" 'systemd' || die "$deb: Depends lacks systemd"
has "$(dpkg-deb -c "$deb")" ' ./usr/sbin/hyperllamad$' || die "$deb: no /usr/sbin/hyperllamad"
has "$(dpkg-deb -I "$deb" conffiles)" '^/etc/hyperllama/hyperllama.toml$' || die "$deb: config is not a conffile"
has "$(dpkg-deb -I "$deb" postinst)" 'systemd-sysusers' || die "$deb: postinst is not packaging/debian/postinst"
if command -v rpm >/dev/null 2>&1; then
	# cargo-generate-rpm takes a script path that doesn't exist as the script text itself: check.
	scripts=$(rpm -qp --scripts "$rpm_main" 2>/dev/null)
	has "$scripts" 'systemd-sysusers' || die "$rpm_main: %post missing"
	has "$scripts" 'disable --now' || die "$rpm_main: %preun missing"
	has "$scripts" 'try-restart' || die "$rpm_main: %postun missing"
	has "$(rpm -qp --scripts "$rpm_se" 2>/dev/null)" 'semodule -i' || die "$rpm_se: %post missing"
	has "$(rpm -qp --configfiles "$rpm_main" 2>/dev/null)" '^/etc/hyperllama/hyperllama.toml$' \
		|| die "$rpm_main: config is not %config"
	has "$(rpm -qpl "$rpm_se" 2>/dev/null)" 'hyperllama.pp$' || die "$rpm_se: no hyperllama.pp"
fi
log "packages:"
ls -l "$deb" "$rpm_main" "$rpm_se" >&2
