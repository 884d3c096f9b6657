#!/usr/bin/env bash
# tests/install/run.sh: the install test (issue 6, item 4). Run by scripts/test.sh after the cargo tests;
# runs standalone too (as root): tests/install/run.sh
#
# Builds the packages (packaging/build.sh), boots a minimal Debian bookworm with systemd-nspawn, installs
# the .deb with apt the way a user would, and checks the running, hardened service from the outside:
# READY, sandbox, users and groups, authorization, journald, reload/restart/stop/watchdog, socket
# activation, remove/reinstall/upgrade/purge. The .rpm is checked with rpm -qp and installed into a
# temp root (its scriptlets run chrooted); the unit's systemd-analyze exposure must stay <= 3.0.
#
# Not root, or systemd-nspawn can't boot here: prints "SKIPPED: install test: <why>", appends that line
# to $HYPERLLAMA_SKIP_LOG (if set) and exits 0. Otherwise the last line is
# "install test: N passed, M failed, K skipped" and the exit status is 1 if anything failed.
#
# Environment:
#   HYPERLLAMA_PKG_NO_BUILD=1       package the binaries already in target/release (scripts/test.sh sets
#                                   it: it has just built them); otherwise build.sh builds them
#   HYPERLLAMA_TEST_GEMMA           a GGUF model for the import/prompt step (default: fetch_gemma's cache)
#   HYPERLLAMA_INSTALL_TEST_KEEP=1  leave the container running at the end (prints how to enter and
#                                   stop it; its changes live in a tmpfs and vanish when it stops)
#   HYPERLLAMA_DEBIAN_MIRROR        mirror for debootstrap (default http://deb.debian.org/debian)
# Cache and logs: .cache/install-test/ (base tarball; last-run/ has build, apt and journal logs).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../../scripts/lib.sh
source "$HERE/../../scripts/lib.sh" # REPO, CACHE, log, die, apt_install, fetch_gemma
# shellcheck source=container.sh
source "$HERE/container.sh"

WORKDIR=$CACHE/install-test
LOGDIR=$WORKDIR/last-run
EXPOSURE_LIMIT=3.0
T_START=$(date +%s)

skip_line() {
	echo "SKIPPED: install test: $*"
	if [ -n "${HYPERLLAMA_SKIP_LOG:-}" ]; then echo "SKIPPED: install test: $*" >>"$HYPERLLAMA_SKIP_LOG" || true; fi
}
skip_all() {
	skip_line "$*"
	exit 0
}

# --- checks -------------------------------------------------------------------------------------------
PASSED=0 FAILED=0 SKIPS=0
FAILED_NAMES=()
# check NAME FUNCTION [ARGS...]: FUNCTION runs in a subshell with errexit. Exit 0 passes (its lines that
# start with "note:" are shown), 77 skips (its last line is the reason), anything else fails (its last
# lines are shown). Checks pass facts to later ones through files in $STATE.
check() {
	local name=$1 out rc t0
	shift
	t0=$(date +%s)
	set +e
	out=$(
		set -e
		"$@" 2>&1
	)
	rc=$?
	set -e
	case $rc in
		0)
			PASSED=$((PASSED + 1))
			printf 'PASS  %s (%ss)\n' "$name" "$(($(date +%s) - t0))"
			grep '^note:' <<<"$out" | sed 's/^note: */      /' || true
			;;
		77)
			SKIPS=$((SKIPS + 1))
			printf 'SKIP  %s: %s\n' "$name" "$(tail -n 1 <<<"$out")"
			skip_line "$name: $(tail -n 1 <<<"$out")" >/dev/null
			;;
		*)
			FAILED=$((FAILED + 1))
			FAILED_NAMES+=("$name")
			printf 'FAIL  %s\n' "$name"
			tail -n 30 <<<"$out" | sed 's/^/      /'
			;;
	esac
}
nok() { # inside a check: fail with a message
	echo "$*"
	exit 1
}
skipc() { # inside a check: skip with a reason
	echo "$*"
	exit 77
}
expect() { # expect WHAT ACTUAL WANTED
	[ "$2" = "$3" ] || nok "$1: got '$2', want '$3'"
}
# unit_prop UNIT PROP: one property of a unit in the container.
unit_prop() { ct systemctl show -P "$2" "$1"; }
main_pid() { unit_prop hyperllama.service MainPID; }
# wait_for SECONDS COMMAND...: polls COMMAND every 0.2 s until it succeeds.
wait_for() {
	local deadline=$(($(date +%s) + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[ "$(date +%s)" -lt "$deadline" ] || return 1
		sleep 0.2
	done
}
is_active() { [ "$(unit_prop "$1" ActiveState)" = active ]; }
# hyperctl as USER inside the container; prints output, returns its exit code.
hctl() {
	local user=$1
	shift
	if [ "$user" = root ]; then ct timeout 300 hyperctl "$@"; else ct timeout 300 runuser -u "$user" -- hyperctl "$@"; fi
}
# exposure OUTPUT: the number from systemd-analyze security's "Overall exposure level" line.
exposure_of() { sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$1" | tail -n 1; }
at_most() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 <= b + 0) }'; }

# --- host-side checks ------------------------------------------------------------------------------------
t_exposure_offline() {
	local out e
	out=$(systemd-analyze security --offline=true "$REPO/systemd/hyperllama.service" 2>&1) || true
	e=$(exposure_of "$out")
	[ -n "$e" ] || nok "no exposure in systemd-analyze output: $out"
	at_most "$e" "$EXPOSURE_LIMIT" || nok "exposure $e > $EXPOSURE_LIMIT"
	echo "note: exposure $e (limit $EXPOSURE_LIMIT)"
}

t_deb_metadata() {
	local depends conffiles dep contents
	depends=$(dpkg-deb -f "$DEB" Depends)
	for dep in systemd libgomp1 procps; do
		grep -Eq "(^|, )$dep( |,|$)" <<<"$depends" || nok "Depends lacks $dep: $depends"
	done
	conffiles=$(dpkg-deb -I "$DEB" conffiles)
	for f in /etc/hyperllama/hyperllama.toml /etc/sysctl.d/60-hyperllama-hugepages.conf; do
		grep -qx "$f" <<<"$conffiles" || nok "$f is not a conffile: $conffiles"
	done
	contents=$(dpkg-deb -c "$DEB" | awk '{print $1, $6}')
	for f in "-rwxr-xr-x ./usr/sbin/hyperllamad" "-rwxr-xr-x ./usr/bin/hyperctl" \
		"-rw-r--r-- ./usr/lib/systemd/system/hyperllama.service" \
		"-rw-r--r-- ./usr/lib/systemd/system/hyperllama.socket" \
		"-rw-r--r-- ./usr/lib/systemd/system/hyperllama-http.socket" \
		"-rw-r--r-- ./usr/lib/sysusers.d/hyperllama.conf" "-rw-r--r-- ./usr/lib/tmpfiles.d/hyperllama.conf" \
		"-rw-r--r-- ./usr/share/selinux/packages/hyperllama/hyperllama.pp"; do
		grep -qxF -- "$f" <<<"$contents" || nok "deb lacks '$f'"
	done
	for s in postinst prerm postrm; do
		dpkg-deb -I "$DEB" "$s" | cmp -s - "$REPO/packaging/debian/$s" || nok "deb $s differs from packaging/debian/$s"
	done
	echo "note: Depends: $depends"
}

# rpm_payload RPM: the cpio payload. (rpm2cpio exits 1 on cargo-generate-rpm's packages, which carry no
# ARCHIVESIZE tag to compare with; the payload is complete: cpio checks its trailer.)
rpm_payload() { rpm2cpio "$1" || true; }

# Both packages' binaries carry no debug sections (the release profile keeps line tables).
t_stripped() {
	local d=$STATE/stripped b sections
	rm -rf "$d" && mkdir -p "$d/deb" "$d/rpm"
	dpkg-deb -x "$DEB" "$d/deb"
	rpm_payload "$RPM" | (cd "$d/rpm" && cpio -idm --quiet)
	for b in deb/usr/sbin/hyperllamad deb/usr/bin/hyperctl rpm/usr/sbin/hyperllamad rpm/usr/bin/hyperctl; do
		# (.debug_gdb_scripts is a few bytes of gdb pretty-printer references that strip keeps.)
		sections=$(readelf -S -W "$d/$b" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\.debug_/ && $i != ".debug_gdb_scripts") print $i }' | sort -u | tr '\n' ' ')
		[ -z "$sections" ] || nok "$b is not stripped ($sections)"
	done
	echo "note: hyperllamad $(du -h "$d/deb/usr/sbin/hyperllamad" | cut -f1), hyperctl $(du -h "$d/deb/usr/bin/hyperctl" | cut -f1)"
	rm -rf "$d"
}

t_rpm_files() {
	local files f flags
	files=$(rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$RPM" 2>/dev/null)
	for f in "-rwxr-xr-x /usr/sbin/hyperllamad" "-rwxr-xr-x /usr/bin/hyperctl" \
		"-rw-r--r-- /usr/lib/systemd/system/hyperllama.service" \
		"-rw-r--r-- /usr/lib/systemd/system/hyperllama.socket" \
		"-rw-r--r-- /usr/lib/systemd/system/hyperllama-http.socket" \
		"-rw-r--r-- /usr/lib/sysusers.d/hyperllama.conf" "-rw-r--r-- /usr/lib/tmpfiles.d/hyperllama.conf" \
		"-rw-r--r-- /etc/hyperllama/hyperllama.toml" "-rw-r--r-- /etc/sysctl.d/60-hyperllama-hugepages.conf"; do
		grep -qxF -- "$f" <<<"$files" || nok "rpm -qpl lacks '$f'"
	done
	flags=$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$RPM" 2>/dev/null)
	for f in /etc/hyperllama/hyperllama.toml /etc/sysctl.d/60-hyperllama-hugepages.conf; do
		grep -qx "cn $f" <<<"$flags" || nok "$f is not %config(noreplace): $(grep " $f" <<<"$flags")"
	done
	grep -q 'hyperllama.pp$' <<<"$(rpm -qpl "$RPM_SE" 2>/dev/null)" || nok "hyperllama-selinux has no hyperllama.pp"
	echo "note: $(wc -l <<<"$files") files in $(basename "$RPM")"
}

t_rpm_scripts() {
	local s req prov
	s=$(rpm -qp --scripts "$RPM" 2>/dev/null)
	grep -q '^postinstall scriptlet' <<<"$s" || nok "no %post"
	grep -q 'systemd-sysusers hyperllama.conf' <<<"$s" || nok "%post doesn't run systemd-sysusers"
	grep -q 'systemd-tmpfiles --create hyperllama.conf' <<<"$s" || nok "%post doesn't run systemd-tmpfiles"
	grep -q 'enable hyperllama.socket hyperllama-http.socket hyperllama.service' <<<"$s" || nok "%post doesn't enable the units"
	grep -q '^preuninstall scriptlet' <<<"$s" || nok "no %preun"
	grep -q 'disable --now' <<<"$s" || nok "%preun doesn't disable --now"
	grep -q 'try-restart hyperllama.service' <<<"$s" || nok "%postun doesn't try-restart"
	grep -q 'semodule -i' <<<"$(rpm -qp --scripts "$RPM_SE" 2>/dev/null)" || nok "hyperllama-selinux %post doesn't semodule -i"
	req=$(rpm -qp --requires "$RPM" 2>/dev/null)
	grep -q '^systemd >= 247' <<<"$req" || nok "Requires lacks systemd >= 247: $req"
	grep -q '^libgomp.so.1' <<<"$req" || nok "Requires lacks libgomp.so.1: $req"
	! grep -q 'group(' <<<"$req" || nok "Requires names a group (nothing provides it on older rpm systems): $req"
	prov=$(rpm -qp --provides "$RPM" 2>/dev/null)
	for p in 'user(hyperllama)' 'group(hyperllama)' 'group(hyperllama-admin)'; do
		grep -qF "$p" <<<"$prov" || nok "Provides lacks $p: $prov"
	done
	echo "note: Requires: $(grep -v '^rpmlib' <<<"$req" | tr '\n' ' ')"
}

# Installs both rpms into the Debian base tree (through a tmpfs overlay in a private mount namespace, so
# the cached tree stays untouched and nothing needs deleting) with rpm --root and no dependency
# resolution (the tree is Debian): the scriptlets run chrooted with the real systemd-sysusers,
# systemd-tmpfiles and systemctl.
t_rpm_root() {
	local t rc=0
	t=$(mktemp -d /tmp/hyperllama-rpmroot.XXXXXX)
	unshare --mount --propagation private bash -euo pipefail -s "$BASE_DIR" "$t" "$RPM" "$RPM_SE" <<'SCRIPT' || rc=$?
base=$1 t=$2 rpm_main=$3 rpm_se=$4
nok() { echo "$*"; exit 1; }
mount -t tmpfs tmpfs "$t"
mkdir "$t/upper" "$t/work" "$t/root"
mount -t overlay overlay -o "lowerdir=$base,upperdir=$t/upper,workdir=$t/work" "$t/root"
r=$t/root
mount -t proc proc "$r/proc" # systemd-tmpfiles in %post needs /proc
opts=(--root "$r" --dbpath /var/lib/rpm)
rpm "${opts[@]}" --initdb
# Debian's rpm refuses to install without --force-debian.
if [[ "$(rpm --help 2>/dev/null)" == *--force-debian* ]]; then opts+=(--force-debian); fi
rpm "${opts[@]}" -i --nodeps "$rpm_main" "$rpm_se" || nok "rpm -i failed"
[ -x "$r/usr/sbin/hyperllamad" ] || nok "no /usr/sbin/hyperllamad"
grep -q '^hyperllama:' "$r/etc/passwd" || nok "%post did not create the hyperllama user"
grep -q '^hyperllama-admin:' "$r/etc/group" || nok "%post did not create hyperllama-admin"
got=$(chroot "$r" stat -c '%a %U' /var/lib/hyperllama) || nok "%post did not create /var/lib/hyperllama"
[ "$got" = "750 hyperllama" ] || nok "/var/lib/hyperllama: $got"
for l in multi-user.target.wants/hyperllama.service sockets.target.wants/hyperllama.socket \
	sockets.target.wants/hyperllama-http.socket; do
	[ -L "$r/etc/systemd/system/$l" ] || nok "%post did not enable $l"
done
[ -f "$r/usr/share/selinux/packages/hyperllama/hyperllama.pp" ] || nok "selinux rpm: no .pp installed"
echo "# edited" >>"$r/etc/hyperllama/hyperllama.toml"
rpm "${opts[@]}" -e hyperllama-selinux hyperllama || nok "rpm -e failed"
[ ! -e "$r/usr/sbin/hyperllamad" ] || nok "rpm -e left /usr/sbin/hyperllamad"
[ ! -e "$r/etc/systemd/system/multi-user.target.wants/hyperllama.service" ] || nok "%preun did not disable the service"
[ ! -e "$r/etc/systemd/system/sockets.target.wants/hyperllama.socket" ] || nok "%preun did not disable the socket"
[ -d "$r/var/lib/hyperllama" ] || nok "erase removed /var/lib/hyperllama (models must stay)"
[ -f "$r/etc/hyperllama/hyperllama.toml.rpmsave" ] || nok "erase did not keep the edited config as .rpmsave"
SCRIPT
	rmdir "$t"
	[ "$rc" = 0 ] || exit "$rc"
	echo "note: rpm --root -i (scriptlets chrooted): user, groups, dirs, enable links; rpm -e: disabled, state and .rpmsave kept"
}

# The SELinux policy package is built and shipped identically in the deb and the rpm.
t_selinux_pp() {
	local d=$STATE/pp magic
	rm -rf "$d" && mkdir -p "$d/deb" "$d/rpm"
	dpkg-deb --fsys-tarfile "$DEB" | tar -C "$d/deb" -x ./usr/share/selinux/packages/hyperllama/hyperllama.pp
	rpm_payload "$RPM_SE" | (cd "$d/rpm" && cpio -idm --quiet ./usr/share/selinux/packages/hyperllama/hyperllama.pp)
	magic=$(od -An -tx4 -N4 "$d/deb/usr/share/selinux/packages/hyperllama/hyperllama.pp" | tr -d ' ')
	# SEPOL_MODULE_PACKAGE_MAGIC
	expect "policy package magic" "$magic" f97cff8f
	cmp -s "$d/deb/usr/share/selinux/packages/hyperllama/hyperllama.pp" "$d/rpm/usr/share/selinux/packages/hyperllama/hyperllama.pp" ||
		nok ".pp differs between the deb and the selinux rpm"
	echo "note: hyperllama.pp $(stat -c %s "$d/deb/usr/share/selinux/packages/hyperllama/hyperllama.pp") bytes"
	rm -rf "$d"
}

# --- checks in the booted container ----------------------------------------------------------------------
t_apt_install() {
	local log=$LOGDIR/apt-install.log before pulled dep
	before=$(ct dpkg-query -W -f='${Package}\n' | sort)
	ct timeout 300 apt-get update -q >"$LOGDIR/apt-update.log" 2>&1 || nok "apt-get update: $(tail -n 5 "$LOGDIR/apt-update.log")"
	ct timeout 600 apt-get install -y "/root/pkgs/$(basename "$DEB")" >"$log" 2>&1 || nok "apt-get install: $(tail -n 20 "$log")"
	expect "dpkg status" "$(ct dpkg-query -W -f='${Status}' hyperllama)" "install ok installed"
	for dep in $(dpkg-deb -f "$DEB" Depends | tr ',' '\n' | sed 's/(.*)//; s/|.*//; s/ //g' | sort -u); do
		[ "$(ct dpkg-query -W -f='${Status}' "$dep" 2>/dev/null)" = "install ok installed" ] || nok "dependency $dep not installed"
	done
	pulled=$(comm -13 <(echo "$before") <(ct dpkg-query -W -f='${Package}\n' | sort) | grep -vx hyperllama | tr '\n' ' ')
	! grep -q 'Could not execute systemctl' "$log" || nok "postinst: starting the units failed: $(grep -B2 -A2 'Could not execute' "$log")"
	echo "note: apt pulled: ${pulled:-nothing}"
}

t_sysusers() {
	local pw
	pw=$(ct getent passwd hyperllama) || nok "no user hyperllama"
	expect "home" "$(cut -d: -f6 <<<"$pw")" /var/lib/hyperllama
	case $(cut -d: -f7 <<<"$pw") in */nologin) ;; *) nok "shell is not nologin: $pw" ;; esac
	ct getent group hyperllama >/dev/null || nok "no group hyperllama"
	ct getent group hyperllama-admin >/dev/null || nok "no group hyperllama-admin"
	expect "/var/lib/hyperllama" "$(ct stat -c '%a %U %G' /var/lib/hyperllama)" "750 hyperllama hyperllama"
	expect "/var/cache/hyperllama" "$(ct stat -c '%a %U %G' /var/cache/hyperllama)" "750 hyperllama hyperllama"
	echo "note: $pw"
}

t_active() {
	expect "Type" "$(unit_prop hyperllama.service Type)" notify
	expect "ActiveState" "$(unit_prop hyperllama.service ActiveState)" active
	expect "SubState" "$(unit_prop hyperllama.service SubState)" running
	expect "NRestarts" "$(unit_prop hyperllama.service NRestarts)" 0
	expect "UnitFileState" "$(unit_prop hyperllama.service UnitFileState)" enabled
	for s in hyperllama.socket hyperllama-http.socket; do
		expect "$s" "$(unit_prop "$s" ActiveState)/$(unit_prop "$s" UnitFileState)" active/enabled
	done
	echo "note: StatusText: $(unit_prop hyperllama.service StatusText)"
}

t_sockets() {
	local listen
	expect "control.sock" "$(ct stat -c '%a %U %F' /run/hyperllama/control.sock)" "666 root socket"
	expect "/run/hyperllama" "$(ct stat -c '%a %U' /run/hyperllama)" "755 hyperllama"
	listen=$(unit_prop hyperllama-http.socket Listen)
	grep -q "127.0.0.1:$HTTP_PORT (Stream)" <<<"$listen" || nok "http socket: $listen"
	grep -q "\[::1\]:$HTTP_PORT (Stream)" <<<"$listen" || nok "http socket: $listen"
	echo "note: http: $(tr '\n' ' ' <<<"$listen")"
}

# The service's process: its user, capabilities, no_new_privs, seccomp, and the fds systemd named.
t_sandbox() {
	local pid st uid env names
	pid=$(main_pid)
	[ "$pid" -gt 0 ] || nok "no main pid"
	st=$(ct cat "/proc/$pid/status")
	uid=$(ct id -u hyperllama)
	expect "Uid" "$(awk '/^Uid:/ {print $2, $3, $4, $5}' <<<"$st")" "$uid $uid $uid $uid"
	for c in CapEff CapPrm CapAmb CapBnd; do
		# CAP_IPC_LOCK only (bit 14)
		expect "$c" "$(awk -v c="$c:" '$1 == c {print $2}' <<<"$st")" 0000000000004000
	done
	expect "NoNewPrivs" "$(awk '/^NoNewPrivs:/ {print $2}' <<<"$st")" 1
	expect "Seccomp" "$(awk '/^Seccomp:/ {print $2}' <<<"$st")" 2
	env=$(ct cat "/proc/$pid/environ" | tr '\0' '\n')
	names=$(sed -n 's/^LISTEN_FDNAMES=//p' <<<"$env" | tr ':' '\n' | sort | tr '\n' ' ')
	expect "LISTEN_FDNAMES (sorted)" "$names" "control http http "
	echo "note: pid $pid uid $uid, caps cap_ipc_lock only, no_new_privs, seccomp; fds control + 2x http"
}

t_verify() {
	local out
	out=$(ct systemd-analyze verify hyperllama.service hyperllama.socket hyperllama-http.socket 2>&1) || nok "$out"
	[ -z "$out" ] || nok "$out"
}

t_exposure_runtime() {
	local out e
	out=$(ct systemd-analyze security --no-pager hyperllama.service 2>&1) || true
	e=$(exposure_of "$out")
	[ -n "$e" ] || nok "no exposure in: $out"
	at_most "$e" "$EXPOSURE_LIMIT" || nok "exposure $e > $EXPOSURE_LIMIT"
	echo "note: exposure $e (the installed, loaded unit)"
}

t_root_status() {
	local out
	out=$(hctl root status) || nok "hyperctl status: exit $?: $out"
	grep -q 'admin' <<<"$out" || nok "root is not reported as admin: $out"
}

t_user_status() {
	local out
	out=$(hctl alice status) || nok "exit $?: $out"
	grep -Eq 'alice \(uid [0-9]+, user\)' <<<"$out" || nok "alice not identified as a plain user: $out"
	out=$(hctl bob status) || nok "bob: exit $?: $out"
	grep -Eq 'bob \(uid [0-9]+, admin\)' <<<"$out" || nok "bob (hyperllama-admin) not identified as admin: $out"
	echo "note: $(grep 'you:' <<<"$out" | sed 's/^ *//')"
}

t_user_list() {
	local out rc=0
	out=$(hctl alice list) || rc=$?
	[ "$rc" != 7 ] || skipc "hyperctl list: the model store is not in this hyperllamad (exit 7: $out)"
	[ "$rc" = 0 ] || nok "exit $rc: $out"
}

t_user_rm_refused() {
	local out rc=0
	out=$(hctl alice rm x 2>&1) || rc=$?
	expect "exit code" "$rc" 4
	grep -q 'hyperllama-admin' <<<"$out" || nok "message doesn't name the admin group: $out"
	rc=0
	out=$(hctl bob rm hyperllama-install-test-no-such-model 2>&1) || rc=$?
	[ "$rc" != 4 ] || nok "bob (in hyperllama-admin) was refused too: $out"
	echo "note: alice: $out" | head -n 1
}

t_model_import() {
	local out rc=0 model
	[ -z "${MODEL_SKIP:-}" ] || skipc "$MODEL_SKIP"
	model=$(model_file) || nok "no test model: $model"
	mkdir -p "$CT_ROOT/srv/hyperllama-test"
	# Bind-mounted read-only at boot when it was already on disk; copied in otherwise.
	[ -f "$CT_ROOT/srv/hyperllama-test/model.gguf" ] || cp "$model" "$CT_ROOT/srv/hyperllama-test/model.gguf"
	# Bounded answers keep the prompt and the drain step short on CPU.
	printf 'FROM ./model.gguf\nPARAMETER num_predict 16\n' >"$CT_ROOT/srv/hyperllama-test/Modelfile"
	chmod 0644 "$CT_ROOT/srv/hyperllama-test/Modelfile"
	ct runuser -u bob -- test -r /srv/hyperllama-test/model.gguf || nok "bob can't read the model file"
	out=$(hctl bob create installtest -f /srv/hyperllama-test/Modelfile 2>&1) || rc=$?
	[ "$rc" != 7 ] || skipc "hyperctl create is not in this hyperllamad (exit 7: $(tail -n 1 <<<"$out"))"
	[ "$rc" = 0 ] || nok "bob: hyperctl create: exit $rc: $out"
	out=$(hctl alice list) || nok "alice: hyperctl list: $out"
	grep -q installtest <<<"$out" || nok "alice doesn't see the model: $out"
	touch "$STATE/model-imported"
	echo "note: bob (hyperllama-admin) imported $(basename "$model") as installtest"
}

t_user_prompt() {
	local out rc=0
	[ -f "$STATE/model-imported" ] || skipc "no model was imported (see the import step)"
	out=$(hctl alice run installtest "Say hello in five words." 2>&1) || rc=$?
	[ "$rc" != 7 ] || skipc "hyperctl run is not in this hyperllamad (exit 7: $(tail -n 1 <<<"$out"))"
	[ "$rc" = 0 ] || nok "alice: hyperctl run: exit $rc: $out"
	[ -n "$(tr -d '[:space:]' <<<"$out")" ] || nok "empty answer"
	touch "$STATE/prompt-ok"
	echo "note: alice got: $(tr '\n' ' ' <<<"$out" | cut -c1-100)"
}

# http_get USER PATH HOST: a plain HTTP/1.0 GET to the loopback listener, as USER, from inside the
# container (bash's /dev/tcp: the image has no curl); prints the response.
http_get() {
	ct timeout 20 runuser -u "$1" -- bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" &&
		printf "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n" "$1" "$2" >&3 && cat <&3' \
		"$HTTP_PORT" "$2" "$3"
}

# The socket-activated TCP listeners serve the HTTP API to a plain user, with the Host allowlist.
t_http() {
	local out code
	out=$(http_get alice /api/version "127.0.0.1:$HTTP_PORT") || true
	[ -n "$out" ] || skipc "no HTTP answer on 127.0.0.1:$HTTP_PORT (the HTTP API is not in this hyperllamad?)"
	code=$(head -n 1 <<<"$out" | awk '{print $2}')
	expect "GET /api/version" "$code" 200
	out=$(http_get alice /api/tags "127.0.0.1:$HTTP_PORT") || true
	expect "GET /api/tags" "$(head -n 1 <<<"$out" | awk '{print $2}')" 200
	if [ -f "$STATE/model-imported" ]; then
		[[ "$out" == *installtest* ]] || nok "alice's /api/tags doesn't list the model: $(tail -n 1 <<<"$out")"
	fi
	out=$(http_get alice /api/version evil.example) || true
	expect "GET with Host: evil.example (DNS rebinding)" "$(head -n 1 <<<"$out" | awk '{print $2}')" 403
	echo "note: /api/version $(tail -n 1 <<<"$(http_get alice /api/version "127.0.0.1:$HTTP_PORT")" | cut -c1-60)"
}

t_reload() {
	local pid
	pid=$(main_pid)
	ct timeout 60 systemctl reload hyperllama.service || nok "systemctl reload failed"
	sleep 1
	expect "MainPID after reload" "$(main_pid)" "$pid"
	is_active hyperllama.service || nok "not active after reload"
}

t_journal() {
	local j ours uid
	j=$(ct journalctl -u hyperllama.service -o json --no-pager)
	ours=$(grep '"SYSLOG_IDENTIFIER":"hyperllamad"' <<<"$j") || nok "no entries with SYSLOG_IDENTIFIER=hyperllamad"
	! grep -q '"_TRANSPORT":"stdout"' <<<"$ours" || nok "hyperllamad wrote plain text to stdout/stderr: $(grep '"_TRANSPORT":"stdout"' <<<"$ours" | head -n 3)"
	[ "$(awk '/"_TRANSPORT":"journal"/ && /"TARGET":"hyperllamad/ && /"CODE_FILE":/ && /"PRIORITY":/' <<<"$ours" | wc -l)" -gt 0 ] ||
		nok "no native journal entries with TARGET, CODE_FILE and PRIORITY"
	grep -q '"F_[A-Z_]*":' <<<"$ours" || nok "no structured fields (F_*) in the daemon's entries"
	# The denied `rm` of the plain user is in the log with her identity.
	uid=$(ct id -u alice)
	[ "$(awk -v f="\"F_UID\":\"$uid\"" '/"_TRANSPORT":"journal"/ && index($0, f)' <<<"$ours" | wc -l)" -gt 0 ] ||
		nok "the refused request of alice (uid $uid) is not logged with her uid"
	echo "note: $(wc -l <<<"$ours") entries; fields e.g. $(grep -o '"F_[A-Z_]*"' <<<"$ours" | sort -u | head -n 6 | tr -d '"' | tr '\n' ' ')"
}

store_snapshot() { # regular files of the store (SQLite's -wal/-shm change by design), with inodes
	ct find /var/lib/hyperllama -xdev -type f ! -name '*-wal' ! -name '*-shm' -printf '%i %p\n' | sort -k2
}

t_restart_keeps_store() {
	local before after pid sock_before list_before list_after blob
	ct systemctl reset-failed hyperllama.service
	before=$(store_snapshot)
	[ -n "$before" ] || nok "/var/lib/hyperllama has no files before the restart"
	pid=$(main_pid)
	sock_before=$(ct stat -c %i /run/hyperllama/control.sock)
	# NAME and ID (MODIFIED is relative to now)
	list_before=$(hctl root list 2>&1 | awk '{print $1, $2}' || true)
	ct timeout 120 systemctl restart hyperllama.service || nok "systemctl restart failed"
	[ "$(main_pid)" != "$pid" ] || nok "MainPID did not change"
	is_active hyperllama.service || nok "not active after restart"
	after=$(store_snapshot)
	[ "$before" = "$after" ] || nok "store changed: $(diff <(echo "$before") <(echo "$after"))"
	expect "control.sock inode (held by hyperllama.socket)" "$(ct stat -c %i /run/hyperllama/control.sock)" "$sock_before"
	list_after=$(hctl root list 2>&1 | awk '{print $1, $2}' || true)
	expect "hyperctl list" "$list_after" "$list_before"
	for blob in $(ct find /var/lib/hyperllama/blobs -type f -name 'sha256-*' 2>/dev/null); do
		expect "$blob content" "sha256-$(ct sha256sum "$blob" | cut -d' ' -f1)" "$(basename "$blob")"
	done
	echo "note: $(wc -l <<<"$after") files kept with their inodes: $(awk '{print $2}' <<<"$after" | tr '\n' ' ')"
}

# systemctl stop: STOPPING, drain (a request in flight finishes), exit 0.
t_stop_drains() {
	local t0 t1 pid inflight=no
	ct systemctl reset-failed hyperllama.service
	pid=$(main_pid)
	if [ -f "$STATE/prompt-ok" ]; then
		ct bash -c 'runuser -u alice -- hyperctl run installtest "Write a poem of eight lines about the sea." \
			>/tmp/drain.out 2>&1; echo $? >/tmp/drain.rc' &
		# Wait until the daemon reports the request in flight.
		if wait_for 60 ct_sh '[[ "$(hyperctl status)" =~ requests:\ *[1-9][0-9]*\ in\ flight ]]'; then inflight=yes; fi
	fi
	t0=$(date +%s.%N)
	ct timeout 120 systemctl stop hyperllama.service || nok "systemctl stop failed"
	t1=$(date +%s.%N)
	expect "ExecMainCode (1 = exited)" "$(unit_prop hyperllama.service ExecMainCode)" 1
	expect "ExecMainStatus" "$(unit_prop hyperllama.service ExecMainStatus)" 0
	expect "Result" "$(unit_prop hyperllama.service Result)" success
	expect "ActiveState" "$(unit_prop hyperllama.service ActiveState)" inactive
	if [ "$inflight" = yes ]; then
		wait
		expect "in-flight request's exit code" "$(ct cat /tmp/drain.rc)" 0
		[ -n "$(ct cat /tmp/drain.out | tr -d '[:space:]')" ] || nok "the in-flight request got no answer"
		echo "note: a request in flight during stop completed: $(ct cat /tmp/drain.out | tr '\n' ' ' | cut -c1-60)"
	else
		echo "note: no request in flight (no model); stop exited 0"
	fi
	echo "note: stop took $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s (pid $pid)"
}

# With the service stopped and its sockets listening, a client's connection starts it.
t_socket_activation() {
	local out
	is_active hyperllama.socket || nok "hyperllama.socket not active"
	[ "$(unit_prop hyperllama.service ActiveState)" = inactive ] || nok "service not stopped before the test"
	out=$(hctl alice status) || nok "alice: hyperctl status through the socket unit: $out"
	is_active hyperllama.service || nok "service not active after the connection"
	echo "note: started by a connection as $(grep 'you:' <<<"$out" | sed 's/^ *you: *//')"
}

# Fed from the main loop at half of WATCHDOG_USEC; a frozen daemon is killed and restarted. Uses a
# short watchdog through a runtime drop-in (the shipped 30 s + 15 s would take a minute).
t_watchdog() {
	local pid dropin=/run/systemd/system/hyperllama.service.d/50-installtest-watchdog.conf
	ct_sh "mkdir -p ${dropin%/*} && printf '[Service]\nWatchdogSec=4s\nTimeoutAbortSec=2s\n' >$dropin"
	ct systemctl daemon-reload
	ct systemctl reset-failed hyperllama.service
	ct timeout 60 systemctl restart hyperllama.service || nok "restart with the watchdog drop-in failed"
	pid=$(main_pid)
	expect "WatchdogUSec" "$(unit_prop hyperllama.service WatchdogUSec)" 4s
	sleep 9
	expect "MainPID after 9 s with WatchdogSec=4s (fed)" "$(main_pid)" "$pid"
	expect "NRestarts" "$(unit_prop hyperllama.service NRestarts)" 0
	ct kill -STOP "$pid"
	wait_for 30 eval '[ "$(main_pid)" != "$pid" ] && [ "$(main_pid)" != 0 ] && is_active hyperllama.service' ||
		nok "a SIGSTOPped daemon was not restarted within 30 s (MainPID $(main_pid), $(unit_prop hyperllama.service ActiveState))"
	[[ "$(ct journalctl -u hyperllama.service --no-pager)" == *'Watchdog timeout'* ]] || nok "no 'Watchdog timeout' in the journal"
	expect "NRestarts" "$(unit_prop hyperllama.service NRestarts)" 1
	ct rm -f "$dropin"
	ct systemctl daemon-reload
	ct systemctl reset-failed hyperllama.service
	ct timeout 60 systemctl restart hyperllama.service || nok "restart without the drop-in failed"
	expect "WatchdogUSec" "$(unit_prop hyperllama.service WatchdogUSec)" 30s
	echo "note: fed for 9 s at WatchdogSec=4s; SIGSTOP -> watchdog timeout -> restarted as pid $(main_pid)"
}

no_daemon_running() { [[ "$(ct sh -c 'for e in /proc/[0-9]*/exe; do readlink "$e"; done 2>/dev/null')" != *hyperllamad* ]]; }

t_remove_keeps() {
	local before
	before=$(store_snapshot)
	ct timeout 300 apt-get remove -y hyperllama >"$LOGDIR/apt-remove.log" 2>&1 || nok "apt-get remove: $(tail -n 20 "$LOGDIR/apt-remove.log")"
	no_daemon_running || nok "hyperllamad still running after remove"
	for u in hyperllama.service hyperllama.socket hyperllama-http.socket; do
		[ "$(unit_prop "$u" ActiveState)" != active ] || nok "$u still active"
	done
	[ ! -e "$CT_ROOT/usr/sbin/hyperllamad" ] || nok "/usr/sbin/hyperllamad still there"
	expect "store after remove" "$(store_snapshot)" "$before"
	[ -f "$CT_ROOT/etc/hyperllama/hyperllama.toml" ] || nok "remove deleted the config"
}

t_reinstall() {
	local before
	before=$(store_snapshot)
	ct timeout 300 apt-get install -y "/root/pkgs/$(basename "$DEB")" >"$LOGDIR/apt-reinstall.log" 2>&1 ||
		nok "apt-get install: $(tail -n 20 "$LOGDIR/apt-reinstall.log")"
	is_active hyperllama.service || nok "not active after reinstall"
	expect "UnitFileState" "$(unit_prop hyperllama.service UnitFileState)" enabled
	expect "store after reinstall" "$(store_snapshot)" "$before"
	hctl alice status >/dev/null || nok "alice: hyperctl status failed after reinstall"
}

# A rebuilt deb with a higher version: the admin's conffile edit stays, the service is restarted on
# the new binary, the store stays.
t_upgrade() {
	local d=$STATE/upgrade ver newver pid before
	rm -rf "$d" && mkdir -p "$d"
	ver=$(dpkg-deb -f "$DEB" Version)
	newver="$ver+installtest1"
	dpkg-deb -R "$DEB" "$d/pkg"
	sed -i "s/^Version: .*/Version: $newver/" "$d/pkg/DEBIAN/control"
	dpkg-deb -Zgzip -z1 -b "$d/pkg" "$CT_ROOT/root/pkgs/hyperllama_upgrade.deb" >/dev/null
	rm -rf "$d"
	echo "# edited by the install test" >>"$CT_ROOT/etc/hyperllama/hyperllama.toml"
	pid=$(main_pid)
	before=$(store_snapshot)
	ct systemctl reset-failed hyperllama.service
	ct timeout 300 apt-get install -y /root/pkgs/hyperllama_upgrade.deb >"$LOGDIR/apt-upgrade.log" 2>&1 ||
		nok "apt-get install (upgrade): $(tail -n 20 "$LOGDIR/apt-upgrade.log")"
	expect "version" "$(ct dpkg-query -W -f='${Version}' hyperllama)" "$newver"
	[ "$(tail -n 1 "$CT_ROOT/etc/hyperllama/hyperllama.toml")" = "# edited by the install test" ] || nok "the edited conffile was replaced"
	is_active hyperllama.service || nok "not active after upgrade"
	[ "$(main_pid)" != "$pid" ] || nok "not restarted on upgrade (MainPID $pid)"
	expect "store after upgrade" "$(store_snapshot)" "$before"
	echo "note: $ver -> $newver, restarted (pid $pid -> $(main_pid))"
}

t_purge() {
	ct timeout 300 apt-get purge -y hyperllama >"$LOGDIR/apt-purge.log" 2>&1 || nok "apt-get purge: $(tail -n 20 "$LOGDIR/apt-purge.log")"
	no_daemon_running || nok "hyperllamad still running after purge"
	for p in /var/lib/hyperllama /var/cache/hyperllama /etc/hyperllama /run/hyperllama /usr/sbin/hyperllamad \
		/etc/systemd/system/multi-user.target.wants/hyperllama.service \
		/etc/systemd/system/sockets.target.wants/hyperllama.socket \
		/etc/systemd/system/sockets.target.wants/hyperllama-http.socket; do
		[ ! -e "$CT_ROOT$p" ] && [ ! -L "$CT_ROOT$p" ] || nok "$p still exists after purge"
	done
	[ -z "$(ct dpkg-query -W -f='${Status}' hyperllama 2>/dev/null | grep -v 'not-installed')" ] ||
		nok "dpkg still knows hyperllama: $(ct dpkg-query -W -f='${Status}' hyperllama)"
}

# The GGUF for the import step: $HYPERLLAMA_TEST_GEMMA, else fetch_gemma (scripts/lib.sh; cached).
model_file() {
	if [ -n "${HYPERLLAMA_TEST_GEMMA:-}" ] && [ -f "$HYPERLLAMA_TEST_GEMMA" ]; then
		echo "$HYPERLLAMA_TEST_GEMMA"
	else
		fetch_gemma
	fi
}

# --- setup and teardown ----------------------------------------------------------------------------------
cleanup() {
	local rc=$?
	set +e
	if [ -n "${CT_NSPAWN:-}" ] && [ -n "${CT_LEADER:-}" ]; then
		ct journalctl --no-pager -o short-precise >"$LOGDIR/journal.txt" 2>&1
	fi
	if [ "${HYPERLLAMA_INSTALL_TEST_KEEP:-0}" = 1 ] && [ -n "${CT_NSPAWN:-}" ]; then
		echo "install test: container left running: nsenter -t $CT_LEADER -m -u -i -n -p -C -r -w bash; stop it: kill $CT_NSPAWN" >&2
		CT_NSPAWN=
	fi
	ct_stop
	[ -z "${STATE:-}" ] || rm -rf --one-file-system "$STATE"
	exit "$rc"
}

summary() {
	echo "install test: logs in $LOGDIR; took $(($(date +%s) - T_START)) s"
	if [ "$FAILED" -gt 0 ]; then echo "install test: failed: ${FAILED_NAMES[*]}"; fi
	echo "install test: $PASSED passed, $FAILED failed, $SKIPS skipped"
	[ "$FAILED" -eq 0 ]
}

[ "$(id -u)" = 0 ] || skip_all "needs root (debootstrap, systemd-nspawn, nsenter); run as root to test the packages"
command -v apt-get >/dev/null || skip_all "needs a Debian/Ubuntu host (apt-get, debootstrap)"

mkdir -p "$WORKDIR"
exec 9>"$WORKDIR/lock"
flock -w 3600 9 || die "another install test holds $WORKDIR/lock"
rm -rf "$LOGDIR" && mkdir -p "$LOGDIR"
STATE=$(mktemp -d "$WORKDIR/state.XXXXXX")
trap cleanup EXIT
trap 'exit 130' INT TERM

apt_install debootstrap systemd-container rpm rpm2cpio cpio binutils iproute2 >/dev/null
log "install test: container base"
t_base=$(date +%s)
BASE_DIR=$(ct_base "$WORKDIR") || die "debootstrap failed (log: $WORKDIR/debootstrap.log)"
echo "install test: base tree $BASE_DIR ($(($(date +%s) - t_base)) s)"

# 1. Boot first: if this host can't boot a container, the test is skipped before anything is built.
boot_opts=(--capability=CAP_IPC_LOCK) # nspawn's default bounding set lacks it; a real host has it
# The model for the import step, when it is already on disk (else t_model_import fetches and copies it).
model=${HYPERLLAMA_TEST_GEMMA:-$GEMMA_FILE}
if [ -f "$model" ]; then boot_opts+=(--bind-ro="$(realpath "$model"):/srv/hyperllama-test/model.gguf"); fi
log "install test: booting $CT_SUITE with systemd-nspawn"
t_boot=$(date +%s)
set +e
ct_boot "$BASE_DIR" "$LOGDIR/console.log" "${boot_opts[@]}"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
	tail -n 15 "$LOGDIR/console.log" >&2 || true
	[ "$rc" -eq 2 ] && skip_all "systemd-nspawn could not boot $CT_SUITE here (console: $LOGDIR/console.log)"
	die "booting the container failed"
fi
HTTP_PORT=11434
if [ -n "$(ss -Hltn "( sport = :$HTTP_PORT )" 2>/dev/null)" ]; then
	# The container shares the host's network; don't fight whatever listens on the host's 11434.
	HTTP_PORT=$((20000 + RANDOM % 20000))
	mkdir -p "$CT_ROOT/etc/systemd/system/hyperllama-http.socket.d"
	printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\nListenStream=[::1]:%s\n' "$HTTP_PORT" "$HTTP_PORT" \
		>"$CT_ROOT/etc/systemd/system/hyperllama-http.socket.d/50-installtest-port.conf"
	echo "install test: port 11434 is taken on this host (shared network); the container's http socket uses $HTTP_PORT"
fi
echo "install test: container up in $(($(date +%s) - t_boot)) s (nsenter into PID $CT_LEADER)"

# 2. Packages.
check "unit hardening: systemd-analyze security --offline=true exposure <= $EXPOSURE_LIMIT" t_exposure_offline
log "install test: packaging/build.sh${HYPERLLAMA_PKG_NO_BUILD:+ (HYPERLLAMA_PKG_NO_BUILD=1)}"
t_build=$(date +%s)
if ! (cd "$REPO" && CI=true bash packaging/build.sh) >"$LOGDIR/build.log" 2>&1; then
	tail -n 40 "$LOGDIR/build.log" | sed 's/^/      /'
	FAILED=$((FAILED + 1)) FAILED_NAMES+=("packaging/build.sh")
	echo "FAIL  packaging/build.sh (log: $LOGDIR/build.log)"
	summary
	exit 1
fi
PASSED=$((PASSED + 1))
echo "PASS  packaging/build.sh builds the deb, both rpms and the .pp ($(($(date +%s) - t_build))s)"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
DEB=$(ls "$TARGET_DIR"/packages/hyperllama_*.deb)
RPM=$(ls "$TARGET_DIR"/packages/hyperllama-[0-9]*.rpm)
RPM_SE=$(ls "$TARGET_DIR"/packages/hyperllama-selinux-*.rpm)

check "deb: Depends, conffiles, files and modes, maintainer scripts" t_deb_metadata
check "deb and rpm: binaries stripped" t_stripped
check "rpm -qpl: files, modes, %config(noreplace); selinux rpm has the .pp" t_rpm_files
check "rpm -qp --scripts/--requires/--provides" t_rpm_scripts
check "rpm: install into a temp root (scriptlets chrooted) and erase" t_rpm_root
check "selinux: hyperllama.pp builds (policy package) and ships in deb and rpm" t_selinux_pp

# 3. The deb in the booted system.
mkdir -p "$CT_ROOT/root/pkgs"
cp "$DEB" "$CT_ROOT/root/pkgs/"
check "deb: apt install ./hyperllama_*.deb pulls its dependencies and starts the units" t_apt_install
if ! ct dpkg-query -W -f='${Status}' hyperllama 2>/dev/null | grep -q 'install ok installed'; then
	summary
	exit 1
fi
ct useradd --create-home alice
ct useradd --create-home --groups hyperllama-admin bob
check "sysusers/tmpfiles: user hyperllama (nologin), groups, 0750 state and cache dirs" t_sysusers
check "service active after READY (Type=notify), sockets enabled and listening" t_active
check "control.sock 0666 root in /run/hyperllama 0755; http on 127.0.0.1 and [::1]" t_sockets
check "sandbox: runs as hyperllama, only CAP_IPC_LOCK, no_new_privs, seccomp; named fds" t_sandbox
check "systemd-analyze verify: installed units" t_verify
check "systemd-analyze security: loaded unit exposure <= $EXPOSURE_LIMIT" t_exposure_runtime
check "root: hyperctl status" t_root_status
check "normal user: hyperctl status (plain user); hyperllama-admin member is admin" t_user_status
check "normal user: hyperctl list" t_user_list
check "normal user: hyperctl rm refused (exit 4, names hyperllama-admin); admin not refused" t_user_rm_refused
MODEL_SKIP=
if [ "$(
	set +e
	hctl alice list >/dev/null 2>&1
	echo $?
)" = 7 ]; then
	MODEL_SKIP="the model store is not in this hyperllamad (hyperctl list: exit 7)"
fi
check "admin imports a model (hyperctl create -f Modelfile, FROM ./model.gguf)" t_model_import
check "normal user runs a prompt on the admin's model" t_user_prompt
check "normal user: HTTP API on the activated 127.0.0.1 listener; Host allowlist (403)" t_http
check "reload (SIGHUP): same process, still active" t_reload
check "journald: structured entries (SYSLOG_IDENTIFIER=hyperllamad, TARGET, CODE_FILE, F_*)" t_journal
check "restart keeps /var/lib/hyperllama (inodes, blobs) and control.sock" t_restart_keeps_store
check "systemctl stop drains and exits 0 (ExecMainStatus=0, Result=success)" t_stop_drains
check "socket activation: a client connection starts the stopped service" t_socket_activation
check "watchdog: fed by the daemon; SIGSTOP -> watchdog restart" t_watchdog
check "apt remove: stops everything, keeps the store and the config" t_remove_keeps
check "apt install again: enabled, active, store intact" t_reinstall
check "upgrade to a newer version: conffile edit kept, restarted, store kept" t_upgrade
check "apt purge removes /var/lib/hyperllama, /var/cache, /etc/hyperllama and the enable links" t_purge

summary
