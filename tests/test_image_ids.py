"""Ownership in imported images: kept with id ranges, else the caller's.

With subordinate ids (/etc/subuid, /etc/subgid) and newuidmap/newgidmap, sbx
imports in a user namespace mapping them (sandbox/kernel/idmap.py): files keep
their owners (inside ids 1..65535), the record says `"ownership": "ranges"`,
and every run of the image maps the same ranges.  Without them (as root, or
with SBX_ID_RANGES=0) sbx maps one id: every file belongs to the caller and
is root's inside, the import says so, and the record says "caller".  The
suite runs as root and as the unprivileged user, who has a subuid range on
the CI machines, so both ways are exercised; the single mapping is also
tested as that user, with SBX_ID_RANGES=0.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import BUSYBOX, REPO, busybox_layer, sbx
from sandbox.kernel import idmap
from sandbox.image import resolve
from sandbox.image.layout import Layout
from sandbox.image.tar import TarReader

# (name, uid, gid): 0:0, a plain user, a group only, and ids too big for the ustar fields (a pax record)
OWNERS = [("home", 0, 0), ("home/user", 1000, 1000), ("home/user/file", 1000, 1000), ("srv", 0, 50),
          ("srv/big", 3000000, 3000001), ("etc-file", 0, 0)]


def owners_layer(fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as out:
        for name, uid, gid in OWNERS:
            info = tarfile.TarInfo(name)
            info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
            if "." in name or name.endswith(("file", "big")):
                info.size, info.mode = 3, 0o640
                out.addfile(info, io.BytesIO(b"abc"))
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o750
                out.addfile(info)
    return buf.getvalue()


def test_reader_gives_the_archive_owners() -> None:
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):  # pax records / base-256 numbers for the big ids
        reader = TarReader(io.BytesIO(owners_layer(fmt)).read)
        found = []
        while (member := reader.next()) is not None:
            found.append((member.name.rstrip("/"), member.uid, member.gid))
        assert found == OWNERS, fmt


def owners_image(tmp_path: Path) -> Path:
    assert os.path.exists(BUSYBOX), "busybox-static is not installed"
    src = tmp_path / "oci"
    Layout(str(src)).index([Layout(str(src)).image([busybox_layer(), owners_layer()], {"Cmd": ["/bin/sh"]},
                                                   compression="gzip")], ref_name="latest")
    return src


def test_import_maps_every_owner_to_the_caller_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SBX_ID_RANGES", "0")  # the single mapping, whatever this user has
    src = owners_image(tmp_path)
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "sandbox.cli.image", "--root", str(store), "import", "--name",
                           "owners", str(src)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1 and "4 entries" in notes[0] and "belong to the caller" in notes[0], done.stderr

    info = resolve("owners", str(store), hold=False)
    top = Path(info.layer_dirs[0])
    for name, _uid, _gid in OWNERS:
        st = os.lstat(top / name)
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), name
    record = json.loads(subprocess.run([sys.executable, "-m", "sandbox.cli.image", "--root", str(store), "inspect",
                                        "owners"], capture_output=True, text=True, env=env, check=True).stdout)
    assert record[0]["ownership"] == "caller"

    # inside, the caller is root: every file is root's, and root may write where the owner could
    result = sbx("run", "--root", str(store), "--image", "owners", "--", "sh", "-c",
                 "stat -c '%u:%g %a %n' /home/user/file /srv/big /srv; id -u; "
                 "echo more >> /home/user/file && cat /home/user/file")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:5] == ["0:0 640 /home/user/file", "0:0 640 /srv/big", "0:0 750 /srv", "0",
                                             "abcmore"], result.stdout

    # quiet imports stay quiet; a layer already in the store is not extracted (nor noted) again
    again = subprocess.run([sys.executable, "-m", "sandbox.cli.image", "--root", str(store), "import", "-q",
                            "--name", "owners2", str(src)], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and again.stderr == "", again.stderr


def test_owners_are_kept_where_id_ranges_are_available(tmp_path: Path) -> None:
    """As a user with subordinate ids: owners kept on disk and inside, removal complete.  As root
    (never ranges): the single mapping."""
    ranges = idmap.available()
    src = owners_image(tmp_path)
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SBX_ID_RANGES", None)
    done = subprocess.run([sys.executable, "-m", "sandbox.cli.image", "--root", str(store), "import", "--name",
                           "owners", str(src)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    record = json.loads(subprocess.run([sys.executable, "-m", "sandbox.cli.image", "--root", str(store), "inspect",
                                        "owners"], capture_output=True, text=True, env=env, check=True).stdout)
    if ranges is None:
        assert os.getuid() == 0 or not os.path.exists("/usr/bin/newuidmap"), "expected id ranges here"
        assert record[0]["ownership"] == "caller"
        return
    assert record[0]["ownership"] == "ranges"
    notes = [line for line in done.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1 and "1 entries" in notes[0] and "above 65535" in notes[0], done.stderr  # /srv/big
    top = Path(resolve("owners", str(store), hold=False).layer_dirs[0])
    outside = {name: (os.lstat(top / name).st_uid, os.lstat(top / name).st_gid)
               for name in ("home", "home/user", "srv")}
    assert outside == {"home": (os.getuid(), os.getgid()),
                       "home/user": (ranges.uid_start + 999, ranges.gid_start + 999),
                       "srv": (os.getuid(), ranges.gid_start + 49)}, outside
    # Inside, the owners are the archive's; root holds no capabilities, so the owner writes.
    result = sbx("run", "--root", str(store), "--image", "owners", "--uid", "0", "--gid", "0", "--", "sh", "-c",
                 "stat -c '%u:%g %a %n' /home/user /srv /srv/big; id -u")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:4] == ["1000:1000 750 /home/user", "0:50 750 /srv", "0:0 640 /srv/big",
                                             "0"], result.stdout
    # uid 1000 in group 0: /home is root's, mode 750
    as_owner = sbx("run", "--root", str(store), "--image", "owners", "--uid", "1000", "--gid", "0", "--",
                   "sh", "-c", "echo more >> /home/user/file && cat /home/user/file && id -u")
    assert as_owner.returncode == 0 and as_owner.stdout == "abcmore\n1000\n", (as_owner.stdout, as_owner.stderr)
    # A warm Runner maps the same ranges (its sandboxes come from the fork server).
    from sandbox import Runner

    with Runner(root=str(store)) as runner:
        for _ in range(2):
            warm = runner.run(["stat", "-c", "%u:%g", "/home/user"], image="owners", options=["--gid", "0"])
            assert warm.verdict == "OK" and warm.stdout == b"1000:1000\n", warm
    # rm and prune remove files that other ids own, too
    for args in (["rm", "owners"], ["prune"]):
        subprocess.run([sys.executable, "-m", "sandbox.cli.image", "--root", str(store), *args], env=env, check=True,
                       capture_output=True)
    assert os.listdir(store / "layers" / "sha256") == []


def test_root_owned_layers_have_no_note(tmp_path: Path) -> None:
    src = tmp_path / "oci"
    Layout(str(src)).index([Layout(str(src)).image([busybox_layer()], compression=None)], ref_name="latest")
    done = subprocess.run([sys.executable, "-m", "sandbox.cli.image", "--root", str(tmp_path / "store"), "import",
                           "--name", "bb", str(src)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and "note:" not in done.stderr, done.stderr
