#!/usr/bin/env python3
"""Run a command in a throw-away VM with a real cgroup v2 hierarchy.

    python tests/vm/run_stage.py [options] -- COMMAND [ARG...]

This machine's cgroup layout is hybrid (v1 owns the controllers), so cgroup v2
limits cannot be tested on it.  This stage boots Debian's own kernel
(linux-image-amd64, 6.1) with virtme-ng under QEMU without KVM (the KVM device
here hangs on a stock kernel).  The guest sees the host's file system read-only,
with writable overlays on /etc, /home, /opt, /tmp, /usr, /var and a few more, so
the repository and the project's venv are usable as they are.  Inside, root
runs tests/vm/guest_setup.sh, which delegates a cgroup to the test user the way
systemd does and runs COMMAND as that user, in that cgroup, in the current
directory.

In the guest COMMAND sees: its own user and HOME; the host's PATH, LANG,
LC_ALL, CI, TERM and every SBX_* variable, plus -e NAME=VALUE; SBX_VM=1 and
SBX_VM_CGROUP (the delegated cgroup, also its own cgroup at start); a
throw-away ext4 file system on /var/tmp (disk-backed scratch with user.*
xattrs, which 6.1's tmpfs lacks; /tmp is an overlay and cannot hold an
overlay's upper dir).  With SBX_VM_USER_MANAGER=1 (test.sh sets it) a
`systemd --user` manager runs for the user too, and COMMAND also gets
XDG_RUNTIME_DIR and SBX_VM_SESSION_CGROUP (tests/vm/user_manager.sh).  Writes outside the overlays fail (the repository is
read-only there); everything written is gone after the run.

Typical use (CI):

    python tests/vm/run_stage.py -- "$VENV/bin/python" -m pytest -q tests/cgroup

Run as root (CI is).  It installs what is missing first: Debian's
qemu-system-x86, linux-image-amd64 and busybox-static (apt-get, without
recommends), and virtme-ng from PyPI into this interpreter's environment.

The exit status is COMMAND's; 124 on the hard timeout; 125 when the stage
itself failed.  The last line is always one "VM-STAGE: ..." marker, e.g.
"VM-STAGE: ran, exit 0 (boot 19.8 s, total 95.1 s)" (with "setup N s"
first when installing took a while), so CI can check that the
stage really ran.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST_SETUP = os.path.join(HERE, "guest_setup.sh")
APT_PACKAGES = ("qemu-system-x86", "linux-image-amd64", "busybox-static")
PIP_PACKAGES = ("virtme-ng",)
GUEST_EXIT = re.compile(r"^VM-GUEST: exit (\d+)\s*$")
# Environment variables handed to the guest command as they are on the host.
PASS_ENV = ("PATH", "LANG", "LC_ALL", "CI", "TERM")


def log(msg: str) -> None:
    print(f"vm-stage: {msg}", file=sys.stderr, flush=True)


def finish(status: int, what: str) -> int:
    sys.stdout.flush()
    print(f"VM-STAGE: {what}", flush=True)
    return status


def dpkg_installed(pkg: str) -> bool:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except OSError:
        return False
    return out.strip().endswith(" installed")


def ensure_installed() -> None:
    """Install the Debian and PyPI packages the stage needs, if missing."""
    missing = [p for p in APT_PACKAGES if not dpkg_installed(p)]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(f"vm-stage: missing Debian packages {missing}; run as root")
        log(f"installing {' '.join(missing)}")
        # INITRD=No: the kernel's postinst skips update-initramfs (~30 s); virtme-ng
        # builds its own initramfs at each boot.
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", INITRD="No")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    if importlib.util.find_spec("virtme_ng") is None:
        log(f"installing {' '.join(PIP_PACKAGES)} into {sys.prefix}")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *PIP_PACKAGES],
            check=True,
        )


def version_key(ver: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", ver)]


def find_kernel() -> str:
    """The newest /boot/vmlinuz-* whose modules are installed."""
    found = []
    for path in glob.glob("/boot/vmlinuz-*"):
        ver = path[len("/boot/vmlinuz-") :]
        if os.path.isdir(f"/lib/modules/{ver}"):
            found.append((version_key(ver), path))
    if not found:
        raise SystemExit("vm-stage: no /boot/vmlinuz-* with modules; is linux-image-amd64 installed?")
    return max(found)[1]


def find_vng() -> str:
    bindir = os.path.dirname(sys.executable)
    vng = os.path.join(bindir, "vng")
    if os.access(vng, os.X_OK):
        return vng
    vng2 = shutil.which("vng")
    if vng2:
        return vng2
    raise SystemExit(f"vm-stage: vng not found next to {sys.executable} nor on PATH")


def relay(stream: object, out: object, on_line: object) -> None:
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        line = raw.decode("utf-8", "replace")
        on_line(line)  # type: ignore[operator]
        out.write(line)  # type: ignore[attr-defined]
        out.flush()  # type: ignore[attr-defined]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Run COMMAND as a cgroup-delegated user inside a cgroup v2 test VM."
    )
    parser.add_argument("--user", default=os.environ.get("SBX_VM_USER", "sbxtest"),
                        help="unprivileged user to run COMMAND as (default: sbxtest)")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("SBX_VM_TIMEOUT", 1200)),
                        help="hard limit for the whole stage in seconds (default: 1200)")
    parser.add_argument("--memory", default="2G", help="guest memory (default: 2G)")
    parser.add_argument("--cpus", default="2", help="guest CPUs (default: 2)")
    parser.add_argument("--kernel", help="kernel image (default: newest /boot/vmlinuz-*)")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for COMMAND (repeatable)")
    parser.add_argument("--no-install", action="store_true", help="do not install missing packages")
    parser.add_argument("--verbose", action="store_true", help="show the guest kernel's console")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (python tests/vm/run_stage.py -- COMMAND...)")

    start = time.monotonic()
    try:
        if os.geteuid() != 0:
            raise SystemExit("vm-stage: run as root (the guest's root delegates the cgroup)")
        subprocess.run(["id", args.user], check=True, stdout=subprocess.DEVNULL)
        if not args.no_install:
            ensure_installed()
        kernel = args.kernel or find_kernel()
        vng = find_vng()
    except (SystemExit, subprocess.CalledProcessError, OSError) as exc:
        print(exc if isinstance(exc, SystemExit) else f"vm-stage: {exc}", file=sys.stderr)
        return finish(125, "failed to set up, exit 125")

    env_words = [f"{k}={os.environ[k]}" for k in PASS_ENV if k in os.environ]
    env_words += [f"{k}={v}" for k, v in os.environ.items() if k.startswith("SBX_") and k not in ("SBX_VM_USER", "SBX_VM_TIMEOUT")]
    env_words += args.env
    guest_cmd = shlex.join(["env", *env_words, "sh", GUEST_SETUP, args.user, "--", *command])
    vng_cmd = [
        vng, "--run", kernel, "--disable-kvm", "--memory", args.memory, "--cpus", args.cpus,
        "--cwd", os.getcwd(), "--exec", guest_cmd,
    ]
    if args.verbose:
        vng_cmd.append("--verbose")
    # vng runs virtme-run and friends from PATH: put this environment's bin first.
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    log(f"booting {kernel} (no KVM, {args.cpus} cpus, {args.memory}), timeout {args.timeout:.0f} s")

    state: dict[str, float | int | None] = {"boot": None, "guest_exit": None}
    launched = time.monotonic()

    def on_stdout(line: str) -> None:
        m = GUEST_EXIT.match(line)
        if m:
            state["guest_exit"] = int(m.group(1))

    def on_stderr(line: str) -> None:
        if state["boot"] is None and line.startswith("vm-guest: kernel"):
            state["boot"] = time.monotonic() - launched

    # Guest stdout and stderr each go to a pipe of their own: QEMU reopens
    # /proc/self/fd/N, so two writers on one regular file would overwrite
    # each other from offset 0.
    proc = subprocess.Popen(
        vng_cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, start_new_session=True,
    )
    threads = [
        threading.Thread(target=relay, args=(proc.stdout, sys.stdout, on_stdout), daemon=True),
        threading.Thread(target=relay, args=(proc.stderr, sys.stderr, on_stderr), daemon=True),
    ]
    for t in threads:
        t.start()
    timed_out = False
    try:
        rc = proc.wait(timeout=max(1.0, args.timeout - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        timed_out = True
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if timed_out:
        os.killpg(proc.pid, signal.SIGKILL)  # our own process group: vng and its QEMU
        proc.wait()
    for t in threads:
        t.join(timeout=5)
    total = time.monotonic() - start
    boot = state["boot"]
    times = f"setup {launched - start:.1f} s, " if launched - start >= 1 else ""
    times += f"boot {boot:.1f} s, " if boot is not None else ""
    times += f"total {total:.1f} s"
    if timed_out:
        return finish(124, f"timeout after {args.timeout:.0f} s, exit 124 ({times})")
    guest_exit = state["guest_exit"]
    if guest_exit is None:
        log(f"the guest command never reported its exit (vng exit {rc})")
        return finish(125, f"guest failed, exit 125 ({times})")
    return finish(int(guest_exit), f"ran, exit {guest_exit} ({times})")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
