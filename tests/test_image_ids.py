"""Ownership in imported images: the single-id mapping, made explicit.

sbx maps one id (root inside -> the caller), so an imported layer's files all
belong to the caller, whatever owners the archive names, and appear as root
inside.  Preserving other owners (through newuidmap/newgidmap and the
caller's /etc/subuid range, at import and again at every run) is not
implemented; until it is, the import says so, the record says
`"ownership": "caller"`, and a run sees every file as root's.  These tests
run as root and again as the unprivileged user, who has a subuid range on
the CI machines: the behaviour must be the same.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from conftest import REPO, sbx
from sandbox.image import resolve
from sandbox.image.layout import Layout
from sandbox.image.tar import TarReader

BUSYBOX = "/bin/busybox"
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


def busybox_layer() -> bytes:
    sys.path.insert(0, str(REPO / "images" / "busybox"))
    from build import layer  # type: ignore[import-not-found]

    return bytes(layer(BUSYBOX))


def test_reader_gives_the_archive_owners() -> None:
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):  # pax records / base-256 numbers for the big ids
        reader = TarReader(io.BytesIO(owners_layer(fmt)).read)
        found = []
        while (member := reader.next()) is not None:
            found.append((member.name.rstrip("/"), member.uid, member.gid))
        assert found == OWNERS, fmt


def test_import_maps_every_owner_to_the_caller_and_says_so(tmp_path: Path) -> None:
    assert os.path.exists(BUSYBOX), "busybox-static is not installed"
    src = tmp_path / "oci"
    Layout(str(src)).index([Layout(str(src)).image([busybox_layer(), owners_layer()], {"Cmd": ["/bin/sh"]},
                                                   compression="gzip")], ref_name="latest")
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "sandbox.image.cli", "--root", str(store), "import", "--name",
                           "owners", str(src)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1 and "4 entries" in notes[0] and "belong to the caller" in notes[0], done.stderr

    info = resolve("owners", str(store), hold=False)
    top = Path(info.layer_dirs[0])
    for name, _uid, _gid in OWNERS:
        st = os.lstat(top / name)
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), name
    record = json.loads(subprocess.run([sys.executable, "-m", "sandbox.image.cli", "--root", str(store), "inspect",
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
    again = subprocess.run([sys.executable, "-m", "sandbox.image.cli", "--root", str(store), "import", "-q",
                            "--name", "owners2", str(src)], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and again.stderr == "", again.stderr


def test_root_owned_layers_have_no_note(tmp_path: Path) -> None:
    src = tmp_path / "oci"
    Layout(str(src)).index([Layout(str(src)).image([busybox_layer()], compression=None)], ref_name="latest")
    done = subprocess.run([sys.executable, "-m", "sandbox.image.cli", "--root", str(tmp_path / "store"), "import",
                           "--name", "bb", str(src)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and "note:" not in done.stderr, done.stderr
