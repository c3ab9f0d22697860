"""The payload's identity: with subordinate ids it is a uid that owns nothing on the host.

Each attack runs twice: in the single mapping (SBX_ID_RANGES=0, the payload is the caller)
as the control that shows the attack is real, and in the default ranged mode, where the
same payload is a subordinate id and the attack fails.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import SINGLE, sbx, sh
from sandbox.kernel import idmap


def _ranges() -> tuple[int, int]:
    """(host uid, host gid) of the payload's default inside ids under id ranges."""
    ranges = idmap.for_payload(os.environ)
    if ranges is None:
        if os.environ.get("CI") and os.environ.get("SBX_ID_RANGES") != "0":
            pytest.fail("CI must give the test user subordinate ids (/etc/subuid, uidmap)")
        pytest.skip("no subordinate ids for this user: add a range to test the ranged mode")
    return ranges.uid_start + idmap.PAYLOAD_ID - 1, ranges.gid_start + idmap.PAYLOAD_ID - 1


@pytest.fixture
def payload_ids() -> tuple[int, int]:
    return _ranges()


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A directory of the caller's that others (so the ranged payload) may write: 0777."""
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o777)
    return d


def test_default_payload_is_a_subordinate_uid(payload_ids: tuple[int, int], shared: Path) -> None:
    result = sh("id -u; id -g; id -un; echo $HOME; touch /box-made; touch /out/made", "-v", f"{shared}:/out:rw",
                check=True)
    assert result.stdout.split() == ["1000", "1000", "sbx", "/home/sbx"]
    st = os.lstat(shared / "made")
    assert (st.st_uid, st.st_gid) == payload_ids  # not the caller: it owns no host file
    assert st.st_uid != os.getuid()


def test_payload_cannot_rewrite_callers_file_in_rw_bind(payload_ids: tuple[int, int], shared: Path) -> None:
    victim = shared / "data.txt"
    victim.write_text("judge data\n")
    victim.chmod(0o444)
    attack = "chmod 666 /out/data.txt; echo pwned > /out/data.txt; rm -f /out/data.txt; true"
    # Control: the caller's own uid may chmod and rewrite (here: replace) its file.
    sh(attack, "-v", f"{shared}:/out:rw", env=SINGLE, check=True)
    assert not victim.exists()
    victim.write_text("judge data\n")
    victim.chmod(0o444)
    shared.chmod(0o755)  # the judge's directory: others may not add or remove entries
    sh(attack, "-v", f"{shared}:/out:rw", check=True)
    assert victim.read_text() == "judge data\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o444


def test_payload_cannot_plant_setuid_program_of_the_caller(payload_ids: tuple[int, int], shared: Path) -> None:
    target = shared / "prog"
    target.write_text("#!/bin/sh\n")
    target.chmod(0o666)  # even writable to all: only its owner can chmod it
    attack = "cp /bin/true /out/prog 2>/dev/null; chmod 4755 /out/prog; true"
    sh(attack, "-v", f"{shared}:/out:rw", check=True)
    st = target.stat()
    assert not st.st_mode & stat.S_ISUID
    assert st.st_uid == os.getuid()
    # Control: as the caller it works (the mode sticks, though nosuid keeps it inert inside).
    sh(attack, "-v", f"{shared}:/out:rw", env=SINGLE, check=True)
    assert target.stat().st_mode & stat.S_ISUID


def test_reads_follow_the_callers_other_bits(payload_ids: tuple[int, int], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    src.chmod(0o755)
    (src / "public").write_text("p\n")
    (src / "public").chmod(0o644)
    (src / "private").write_text("s\n")
    (src / "private").chmod(0o600)
    result = sh("cat /src/public; cat /src/private || echo DENIED", "-v", f"{src}:/src")
    assert result.stdout == "p\nDENIED\n"
    control = sh("cat /src/private", "-v", f"{src}:/src", env=SINGLE, check=True)
    assert control.stdout == "s\n"


def test_places_sbx_makes_are_writable(payload_ids: tuple[int, int], tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    src.chmod(0o755)
    script = ("set -e; for d in / /tmp /var/tmp /dev/shm /home/sbx /scratch /ov; do touch $d/w; done; "
              "echo > /ov/new; echo ok")
    result = sh(script, "--tmpfs", "/scratch:size=1M", "-v", f"{src}:/ov:overlay", check=True)
    assert result.stdout == "ok\n"
    assert list(src.iterdir()) == []  # the overlay's changes vanished


def test_single_mapping_rw_bind_warns_and_strict_refuses(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    out = tmp_path / "out"
    out.mkdir()
    result = sh(f"touch {marker}", "-v", f"{out}:/out:rw", "-v", f"{tmp_path}:{tmp_path}:rw", env=SINGLE,
                check=True)
    assert "the payload is you on the host" in result.stderr
    assert marker.exists()
    marker.unlink()
    refused = sh(f"touch {marker}", "--strict", "-v", f"{out}:/out:rw", "-v", f"{tmp_path}:{tmp_path}:rw",
                 env=SINGLE)
    assert refused.returncode == 125
    assert refused.stderr.startswith("sbx: error: ") and "--strict" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    assert not marker.exists()


def test_uid_zero_with_rw_bind_warns_under_ranges(payload_ids: tuple[int, int], shared: Path) -> None:
    result = sh("id -u", "--uid", "0", "--gid", "0", "-v", f"{shared}:/out:rw", check=True)
    assert result.stdout == "0\n"
    assert "--uid 0 with an rw bind" in result.stderr


def test_ranged_run_prints_no_identity_warning(payload_ids: tuple[int, int], shared: Path) -> None:
    result = sh("true", "-v", f"{shared}:/out:rw", check=True)
    assert result.stderr == ""


def test_doctor_says_which_identity_applies(payload_ids: tuple[int, int]) -> None:
    ranged = sbx("doctor")
    line = next(x for x in ranged.stdout.splitlines() if "payload identity" in x)
    assert line.startswith("ok") and f"{payload_ids[0]} on the host" in line
    single = sbx("doctor", env=SINGLE)
    out = single.stdout.splitlines()
    index = next(i for i, x in enumerate(out) if "payload identity" in x)
    assert out[index].startswith("warn") and "single mapping" in out[index]
    assert "usermod --add-subuids" in out[index + 1]


def test_ids_flags_pick_inside_ids(payload_ids: tuple[int, int], shared: Path) -> None:
    result = sh("id -u; id -g; touch /out/f", "--uid", "1234", "--gid", "2345", "-v", f"{shared}:/out:rw",
                check=True)
    assert result.stdout.split() == ["1234", "2345"]
    st = os.lstat(shared / "f")
    base_uid, base_gid = payload_ids[0] - 999, payload_ids[1] - 999
    assert (st.st_uid, st.st_gid) == (base_uid + 1233, base_gid + 2344)
