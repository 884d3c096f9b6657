# shellcheck shell=bash
# tests/install/container.sh: a throwaway Debian bookworm booted with systemd-nspawn (sourced by run.sh).
#
# The base tree is debootstrapped once and cached as a directory in .cache/install-test/ (git-ignored).
# Each run boots it with
#   systemd-nspawn --boot --register=no --keep-unit --volatile=overlay
# so the cached tree stays read-only under an overlay whose upper layer is a tmpfs that disappears with
# the container: no copy per run, nothing to delete afterwards, and a second run starts from the same
# pristine tree. (systemd is not PID 1 on the test hosts, so there is no machined: --register=no is what
# boots, and machinectl / systemd-run --machine can't reach the container.) Commands run inside by
# entering every namespace of the container's PID 1 (its systemd) with nsenter, with a clean environment:
# they see the container's mounts, PID namespace, /run/systemd (systemctl talks to the container's
# manager) and journal. The host reaches the container's files as /proc/<PID 1>/root. The container
# shares the host's network (apt needs the Debian mirror).
#
# Variables: CT_ROOT (the container's / seen from the host), CT_NSPAWN (nspawn's pid), CT_LEADER (the
# container's PID 1 as seen from the host), CT_LOG (console log).

CT_DEBOOTSTRAP_INCLUDE=systemd,systemd-sysv,dbus
CT_SUITE=bookworm
CT_MIRROR=${HYPERLLAMA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Rebuilt when older than this many days (apt-get update inside covers point releases in between).
CT_BASE_MAX_AGE_DAYS=30

# ct_base DIR: prints the path of the cached base tree, debootstrapping it first if missing or stale.
# The tree is only ever used read-only (overlay lower layer).
ct_base() {
	local dir=$1 base tmp
	base=$dir/$CT_SUITE-minbase-systemd
	mkdir -p "$dir"
	if [ -f "$base/.complete" ] && [ -z "$(find "$base/.complete" -mtime +"$CT_BASE_MAX_AGE_DAYS" 2>/dev/null)" ]; then
		echo "$base"
		return 0
	fi
	tmp=$base.tmp
	rm -rf --one-file-system "$tmp"
	log "debootstrap --variant=minbase --include=$CT_DEBOOTSTRAP_INCLUDE $CT_SUITE (once; cached in $base)"
	if ! debootstrap --variant=minbase --include="$CT_DEBOOTSTRAP_INCLUDE" "$CT_SUITE" "$tmp" "$CT_MIRROR" \
		>"$dir/debootstrap.log" 2>&1; then
		tail -n 30 "$dir/debootstrap.log" >&2
		rm -rf --one-file-system "$tmp"
		return 1
	fi
	# Nothing host-specific; the apt lists come from each run's apt-get update.
	echo hyperllama-test >"$tmp/etc/hostname"
	rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/archives/*.deb
	touch "$tmp/.complete"
	if [ -e "$base" ]; then
		mv "$base" "$base.old"
		rm -rf --one-file-system "$base.old"
	fi
	mv "$tmp" "$base"
	echo "$base"
}

# ct_boot BASE LOG [nspawn options...]: boots BASE (volatile overlay), waits until its systemd has finished
# starting up. Returns 2 if it could not boot (the caller reports the test as skipped), 1 on other errors.
ct_boot() {
	local base=$1
	CT_LOG=$2
	shift 2
	mkdir -p /run/systemd/nspawn
	CT_LEADER=
	systemd-nspawn --boot --register=no --keep-unit --volatile=overlay --console=read-only -D "$base" \
		--machine=hyperllama-test "$@" </dev/null >"$CT_LOG" 2>&1 &
	CT_NSPAWN=$!
	local child self_ns state
	self_ns=$(readlink /proc/self/ns/pid)
	# The container's PID 1 is the child of nspawn that lives in another PID namespace.
	for _ in $(seq 1 300); do
		kill -0 "$CT_NSPAWN" 2>/dev/null || { CT_NSPAWN=; return 2; }
		for child in $(pgrep -P "$CT_NSPAWN" || true); do
			if [ "$(readlink "/proc/$child/ns/pid" 2>/dev/null)" != "$self_ns" ] &&
				[ -S "/proc/$child/root/run/systemd/private" ]; then
				CT_LEADER=$child
			fi
		done
		[ -n "$CT_LEADER" ] && break
		sleep 0.2
	done
	[ -n "$CT_LEADER" ] || return 2
	# shellcheck disable=SC2034 # used by run.sh
	CT_ROOT=/proc/$CT_LEADER/root
	state=$(ct timeout 120 systemctl is-system-running --wait 2>/dev/null || true)
	case "$state" in
		running) return 0 ;;
		degraded)
			echo "container booted degraded; failed units:" >&2
			ct systemctl --failed --no-legend >&2 || true
			return 0
			;;
		*) echo "container did not finish booting (state: ${state:-none})" >&2; return 2 ;;
	esac
}

# ct CMD...: runs CMD inside the container as root with a clean environment.
# (nsenter forks into the container's PID namespace; put timeouts inside: `ct timeout 60 ...`.)
ct() {
	nsenter --target "$CT_LEADER" --mount --uts --ipc --net --pid --cgroup --root --wd \
		env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
		TERM=dumb DEBIAN_FRONTEND=noninteractive SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

# ct_sh SCRIPT: a bash script inside the container (errexit, pipefail).
ct_sh() { ct bash -euo pipefail -c "$1"; }

# ct_user USER CMD...: CMD as USER (with USER's groups, like a login) inside the container.
ct_user() {
	local user=$1
	shift
	ct runuser -u "$user" -- env HOME="/home/$user" USER="$user" LOGNAME="$user" "$@"
}

# ct_stop: powers the container off (SIGTERM to nspawn = orderly shutdown), SIGKILL after 30 s.
ct_stop() {
	[ -n "${CT_NSPAWN:-}" ] || return 0
	if kill -0 "$CT_NSPAWN" 2>/dev/null; then
		kill -TERM "$CT_NSPAWN" 2>/dev/null || true
		for _ in $(seq 1 150); do
			kill -0 "$CT_NSPAWN" 2>/dev/null || break
			sleep 0.2
		done
		if kill -0 "$CT_NSPAWN" 2>/dev/null; then
			echo "container did not power off in 30 s; killing it" >&2
			# Killing the PID namespace's init kills everything in it; nspawn then exits.
			[ -n "${CT_LEADER:-}" ] && kill -KILL "$CT_LEADER" 2>/dev/null || true
			kill -KILL "$CT_NSPAWN" 2>/dev/null || true
		fi
	fi
	wait "$CT_NSPAWN" 2>/dev/null || true
	CT_NSPAWN=
}
