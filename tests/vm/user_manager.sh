#!/bin/sh
# Runs as root inside the test VM, from guest_setup.sh when SBX_VM_USER_MANAGER=1.
#
#   user_manager.sh USER UID GID SLICE
#
# Lays out SLICE (a user-UID.slice) the way systemd does for a logged-in user,
# without systemd as pid 1:
#
#   SLICE/                  root's; only its cgroup.procs is the user's (so the
#                           user manager may move the user's processes between
#                           its children, as the system manager would for it)
#   SLICE/user@UID.service  delegated to the user; `systemd --user` runs here
#   SLICE/session-1.scope   root's (cgroup.procs writable by the user, so a test
#                           can put a shell there): a login session's scope, not
#                           delegated, where sbx cannot make run cgroups
#
# and starts `/usr/lib/systemd/systemd --user` for USER with
# XDG_RUNTIME_DIR=/run/user/UID (0700, the user's).  It needs no D-Bus:
# systemctl --user and systemd-run --user talk to $XDG_RUNTIME_DIR/systemd/private.
# Prints the shell lines to eval on success (XDG_RUNTIME_DIR and
# SBX_VM_SESSION_CGROUP); exits non-zero, saying why, when the manager does not come up.
set -u
user=$1 uid=$2 gid=$3 slice=$4
cg=/sys/fs/cgroup

say() { echo "vm-guest: user manager: $*" >&2; }

enable_all() {
    for c in $(cat "$1/cgroup.controllers"); do
        echo "+$c" > "$1/cgroup.subtree_control" 2>/dev/null || say "cannot enable $c in $1"
    done
}

# Every level between the root and SLICE passes the controllers down.
rel=${slice#"$cg"/}
dir=$cg
oldifs=$IFS; IFS=/
for part in $rel; do
    IFS=$oldifs
    dir=$dir/$part
    mkdir -p "$dir"
    enable_all "$dir"
done
IFS=$oldifs
chown "$uid:$gid" "$slice/cgroup.procs"

svc=$slice/user@$uid.service
session=$slice/session-1.scope
mkdir -p "$svc" "$session"
chown "$uid:$gid" "$svc" "$svc/cgroup.procs" "$svc/cgroup.subtree_control" "$svc/cgroup.threads"
chown "$uid:$gid" "$session/cgroup.procs"
# What the system manager marks a Delegate=yes unit with.
python3 -c 'import os, sys; os.setxattr(sys.argv[1], "trusted.delegate", b"1")' "$svc" 2>/dev/null \
    || say "cannot set trusted.delegate on $svc"

# systemd --user refuses to start unless sd_booted(), i.e. /run/systemd/system
# exists ("Trying to run as user instance, but the system has not been booted
# with systemd."); the guest's init is virtme-ng's.
mkdir -p /run/systemd/system
run=/run/user/$uid
mkdir -p /run/user
mkdir -m 0700 -p "$run"
chown "$uid:$gid" "$run"
chmod 0700 "$run"

home=$(getent passwd "$user" | cut -d: -f6)
log=/run/sbx-user-manager.log
# A child shell moves itself into user@UID.service and becomes the manager.
sh -c 'd=$1 u=$2 g=$3; shift 3
    echo $$ > "$d/cgroup.procs" && exec setpriv --reuid="$u" --regid="$g" --init-groups -- "$@"' \
    sh "$svc" "$uid" "$gid" \
    env -i HOME="${home:-/}" USER="$user" LOGNAME="$user" XDG_RUNTIME_DIR="$run" \
        PATH=/usr/local/bin:/usr/bin:/bin \
        /usr/lib/systemd/systemd --user --log-target=console --log-level=info \
    </dev/null >"$log" 2>&1 &
pid=$!

state=
i=0
while [ $i -lt 600 ]; do
    if [ -S "$run/systemd/private" ]; then
        state=$(setpriv --reuid="$uid" --regid="$gid" --init-groups -- \
            env XDG_RUNTIME_DIR="$run" systemctl --user is-system-running 2>&1)
        case $state in running|degraded) break ;; esac
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        say "systemd --user exited; its log:"
        sed 's/^/    /' "$log" >&2
        exit 1
    fi
    sleep 0.1
    i=$((i + 1))
done
case $state in
    running|degraded) ;;
    *)
        say "not running after 60 s (is-system-running: ${state:-no socket}); its log:"
        sed 's/^/    /' "$log" >&2
        exit 1
        ;;
esac
say "systemd --user (pid $pid) $state in $svc"
echo "XDG_RUNTIME_DIR=$run; export XDG_RUNTIME_DIR"
echo "SBX_VM_SESSION_CGROUP=$session; export SBX_VM_SESSION_CGROUP"
