#!/usr/bin/env python3
"""Build a minimal busybox image as an OCI layout, offline, from Debian's busybox-static.

    apt-get install busybox-static
    python3 images/busybox/build.py OUT_DIR [--busybox /bin/busybox] [--compression gzip|zstd|none]
    sbx image import --name busybox OUT_DIR

One layer: /bin/busybox, a symlink per applet in /bin, /etc/passwd and
/etc/group with root and nobody, and empty /tmp, /root, /proc, /dev, /sys.
The tar is reproducible (fixed owners and times, sorted entries), so the
same busybox binary always gives the same digests.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tarfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from sandbox.image.layout import Layout  # noqa: E402

ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
          "s390x": "s390x", "riscv64": "riscv64"}
MTIME = 1704067200  # 2024-01-01


def layer(busybox: str) -> bytes:
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, MTIME, link
            info.uname = info.gname = "root"
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for name, mode in (("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o555), ("root", 0o700),
                           ("sys", 0o555), ("tmp", 0o1777), ("usr", 0o755), ("usr/bin", 0o755), ("var", 0o755)):
            add(name, tarfile.DIRTYPE, mode)
        with open(busybox, "rb") as file:
            add("bin/busybox", tarfile.REGTYPE, 0o755, file.read())
        add("etc/passwd", tarfile.REGTYPE, 0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
        for applet in sorted(set(applets) - {"busybox"}):
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--busybox", default="/bin/busybox")
    parser.add_argument("--compression", choices=("gzip", "zstd", "none"), default="gzip")
    parser.add_argument("--tag", default="latest")
    args = parser.parse_args()
    if not os.path.exists(args.busybox):
        parser.error(f"{args.busybox} not found: apt-get install busybox-static")
    out = Layout(args.out)
    config = {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"}
    desc = out.image([layer(args.busybox)], config, None if args.compression == "none" else args.compression,
                     architecture=ARCHES.get(platform.machine(), platform.machine()))
    out.index([desc], ref_name=args.tag)
    print(desc["digest"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
