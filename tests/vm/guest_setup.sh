#!/bin/sh
# Runs as root inside the test VM (started by tests/vm/run_stage.py).
#
#   guest_setup.sh USER -- COMMAND...
#
# 1. makes sure the unified cgroup hierarchy is mounted on /sys/fs/cgroup;
# 2. delegates a cgroup to USER the way systemd does for a Delegate=yes unit:
#    enable the offered controllers in the parent's cgroup.subtree_control,
#    mkdir the cgroup, chown it and its cgroup.procs, cgroup.subtree_control
#    and cgroup.threads to the user, and put the user's shell in it;
# 3. mounts a small ext4 file system on /var/tmp (disk-backed scratch space
#    with user.* xattrs: tmpfs on 6.1 has none, and /tmp is an overlay);
# 4. runs COMMAND as USER in the delegated cgroup and prints
#    "VM-GUEST: exit N" with its exit status, which is also ours.
#
# With SBX_VM_USER_MANAGER=1 it also starts a `systemd --user` manager for USER
# (tests/vm/user_manager.sh): the delegated cgroup then sits in
# /sys/fs/cgroup/user.slice/user-UID.slice next to user@UID.service and a
# non-delegated session-1.scope, and COMMAND gets XDG_RUNTIME_DIR and
# SBX_VM_SESSION_CGROUP.  Without it nothing changes.
set -u
user=$1; shift
[ "${1:-}" = "--" ] && shift

say() { echo "vm-guest: $*" >&2; }
now() { cut -d' ' -f1 /proc/uptime; }

say "kernel $(uname -r), up $(now) s, $(nproc) cpus"

cg=/sys/fs/cgroup
if [ ! -e "$cg/cgroup.controllers" ]; then
    mount -t cgroup2 -o nsdelegate cgroup2 "$cg" || { say "cannot mount cgroup2"; echo "VM-GUEST: exit 125"; exit 125; }
fi
for c in $(cat "$cg/cgroup.controllers"); do
    echo "+$c" > "$cg/cgroup.subtree_control" 2>/dev/null || say "cannot enable $c at the root"
done

uid=$(id -u "$user") && gid=$(id -g "$user") || { say "no user $user"; echo "VM-GUEST: exit 125"; exit 125; }
parent=$cg
if [ "${SBX_VM_USER_MANAGER:-}" = 1 ]; then
    parent=$cg/user.slice/user-$uid.slice
fi
deleg="$parent/sbx-test.delegate"
if [ "$parent" != "$cg" ]; then
    manager_env=$(sh "$(dirname "$0")/user_manager.sh" "$user" "$uid" "$gid" "$parent") \
        || { say "cannot start systemd --user"; echo "VM-GUEST: exit 125"; exit 125; }
    eval "$manager_env"
fi
mkdir -p "$deleg"
chown "$uid:$gid" "$deleg" "$deleg/cgroup.procs" "$deleg/cgroup.subtree_control" "$deleg/cgroup.threads"
say "delegated $deleg to $user: $(cat "$deleg/cgroup.controllers")"

# Disk-backed scratch with user xattrs (an overlay's upper dir cannot be on an
# overlay, and 6.1's tmpfs has no user.* xattrs).
if [ "${SBX_VM_SCRATCH:-64}" != 0 ]; then
    img=/run/sbx-scratch.img
    modprobe -a loop ext4 2>/dev/null
    if truncate -s "${SBX_VM_SCRATCH:-64}M" "$img" && mkfs.ext4 -q -F "$img" >/dev/null 2>&1 \
        && mount -o loop "$img" /var/tmp 2>/dev/null; then
        chmod 1777 /var/tmp
    else
        say "no ext4 scratch on /var/tmp"
    fi
fi

home=$(getent passwd "$user" | cut -d: -f6)
export HOME="${home:-/tmp}" USER="$user" LOGNAME="$user"
export SBX_VM=1 SBX_VM_CGROUP="$deleg"
export PYTHONUNBUFFERED=1
export TMPDIR=/tmp
say "running as $user (uid $uid) at $(now) s: $*"
# A child shell moves itself into the delegated cgroup and becomes the user's
# command, so only the user's processes live there (as in a systemd scope).
sh -c 'd=$1 u=$2 g=$3; shift 3
    echo $$ > "$d/cgroup.procs" && exec setpriv --reuid="$u" --regid="$g" --init-groups -- "$@"' \
    sh "$deleg" "$uid" "$gid" "$@"
rc=$?
say "done at $(now) s"
echo "VM-GUEST: exit $rc"
exit $rc
