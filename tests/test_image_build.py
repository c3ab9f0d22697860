"""`sbx image build` and `sbx run --commit`: real sandboxes on imported busybox, through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, busybox_image, sbx
from sandbox.image.containerfile import ContainerfileError, parse
from test_fuzz import run_harness

PROFILES = sorted(path.stem for path in (REPO / "profiles").glob("*.toml"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("build")
    image(base / "store", "import", "--name", "busybox", str(busybox_image(base / "bb")), check=True)
    return base / "store"


def image(root: Path, *args: str, check: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return sbx("image", "--root", str(root), *args, check=check, cwd=cwd, timeout=120)


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return sbx("run", "--root", str(root), *args)


def build(root: Path, context: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    (context / "Containerfile").write_text(text)
    return image(root, "build", *args, str(context))


def inspect(root: Path, name: str) -> dict[str, object]:
    result = image(root, "inspect", name, check=True)
    return json.loads(result.stdout)[0]  # type: ignore[no-any-return]


def leftovers(root: Path) -> list[str]:
    return os.listdir(root / "tmp")


def one_error(result: subprocess.CompletedProcess[str], start: str) -> None:
    assert result.returncode == 125, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("sbx: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"sbx: error: {start}"), result.stderr
    assert "Traceback" not in result.stderr


def test_cache_hits_run_nothing_and_misses_rebuild(store: Path, tmp_path: Path) -> None:
    witness = tmp_path / "witness"
    witness.mkdir()
    profile = tmp_path / "witnessed.toml"
    profile.write_text(f'extends = "build"\n[[mount]]\nsource = "{witness}"\ntarget = "/witness"\nmode = "rw"\n')
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "data.txt").write_text("one\n")
    text = "FROM busybox\nCOPY data.txt /data.txt\nRUN echo ran >> /witness/log && cp /data.txt /copied\n"
    first = build(store, context, text, "-t", "cached", "--profile", str(profile))
    assert first.returncode == 0, first.stderr
    assert (witness / "log").read_text() == "ran\n"
    assert "using the cache" not in first.stderr
    again = build(store, context, text, "-t", "cached", "--profile", str(profile))
    assert again.returncode == 0, again.stderr
    assert (witness / "log").read_text() == "ran\n"  # the cached RUN did not run
    assert again.stderr.count("using the cache") == 2
    assert again.stdout == first.stdout  # the same image id
    (context / "data.txt").write_text("two\n")  # new content: COPY and the RUN after it miss
    changed = build(store, context, text, "-t", "cached", "--profile", str(profile))
    assert changed.returncode == 0 and "using the cache" not in changed.stderr, changed.stderr
    assert (witness / "log").read_text() == "ran\nran\n"
    assert run(store, "--image", "cached", "--", "cat", "/copied").stdout == "two\n"
    copied = inspect(store, "cached")["layers"][1]  # type: ignore[index]
    fresh = build(store, context, text, "-t", "cached", "--profile", str(profile), "--no-cache")
    assert fresh.returncode == 0 and "using the cache" not in fresh.stderr, fresh.stderr
    assert (witness / "log").read_text() == "ran\nran\nran\n"
    # Copying the same content again gives the same layer (its digest does not depend on when).
    assert inspect(store, "cached")["layers"][1] == copied  # type: ignore[index]
    assert leftovers(store) == []


def test_build_arg_changes_the_key(store: Path, tmp_path: Path) -> None:
    text = "FROM busybox\nARG WHO=nobody\nRUN echo \"hi $WHO\" > /who\n"
    assert build(store, tmp_path, text, "-t", "args").returncode == 0
    second = build(store, tmp_path, text, "-t", "args", "--build-arg", "WHO=you")
    assert second.returncode == 0 and "using the cache" not in second.stderr, second.stderr
    assert run(store, "--image", "args", "--", "cat", "/who").stdout == "hi you\n"


def test_config_layers_and_whiteouts(store: Path, tmp_path: Path) -> None:
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f").write_text("file\n")
    (tmp_path / "tree" / "link").symlink_to("sub/f")
    (tmp_path / "tool").write_text("#!/bin/sh\necho tool\n")
    os.chmod(tmp_path / "tool", 0o4755)
    subprocess.run(["tar", "-czf", str(tmp_path / "a.tar.gz"), "-C", str(tmp_path / "tree"), "."], check=True)
    text = ("FROM busybox\nENV APP=/app MODE=\"two words\"\nWORKDIR $APP\nCOPY tree/ tree/\nCOPY tool /usr/bin/\n"
            "ADD a.tar.gz /unpacked\nRUN rm /bin/vi && rm -r /etc && mkdir /etc && echo new > /etc/only\n"
            "LABEL purpose=test\nENTRYPOINT [\"/bin/sh\", \"-c\"]\nCMD [\"echo $MODE; pwd\"]\n")
    result = build(store, tmp_path, text, "-t", "configured")
    assert result.returncode == 0, result.stderr
    assert run(store, "--image", "configured").stdout == "two words\n/app\n"
    listing = run(store, "--image", "configured", "--", "cat tree/link /unpacked/sub/f; ls /etc; "
                  "test -e /bin/vi || echo vi-gone; stat -c %a /usr/bin/tool; tool")
    assert listing.stdout.split("\n") == ["file", "file", "hosts", "only", "vi-gone", "755", "tool", ""], listing.stderr
    record = inspect(store, "configured")
    assert record["config"]["Labels"] == {"purpose": "test"}  # type: ignore[index]
    assert len(record["layers"]) == 5  # type: ignore[arg-type]  # busybox, COPY, COPY, ADD, RUN


def test_recipe_builds_offline_from_busybox(store: Path) -> None:
    result = image(store, "build", "-t", "busybox-hello", "--build-arg", "GREETING=hi", str(REPO / "images/busybox"))
    assert result.returncode == 0, result.stderr
    shown = run(store, "--image", "busybox-hello")
    assert shown.stdout == "Built by sbx image build, offline.\nhi from an sbx build\n", shown.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_built_image_runs_under_every_profile(store: Path, tmp_path: Path, profile: str) -> None:
    built = build(store, tmp_path, "FROM busybox\nRUN echo built > /marker\n", "-t", "everywhere")
    assert built.returncode == 0, built.stderr
    result = sbx("run", "--root", str(store), "--profile", profile, "--image", "everywhere", "--", "cat", "/marker",
                 cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "built\n"), result.stderr


def test_run_commit_saves_the_writable_layer(store: Path) -> None:
    made = run(store, "--image", "busybox", "--commit", "committed", "--", "sh", "-c",
               "echo hi > /hello && ln /hello /hello2 && chmod 6755 /hello && rm /bin/ls && exit 3")
    assert made.returncode == 3, made.stderr  # the run's own status; saved all the same
    assert "saved image committed" in made.stderr
    result = run(store, "--image", "committed", "--", "sh", "-c",
                 "cat /hello2; stat -c %a /hello; test -e /bin/ls || echo ls-gone; ls /etc")
    assert result.stdout.split() == ["hi", "755", "ls-gone", "group", "hosts", "passwd"], result.stderr
    record = inspect(store, "committed")
    assert len(record["layers"]) == 2  # type: ignore[arg-type]
    assert leftovers(store) == []


def test_run_commit_needs_an_imported_image(store: Path) -> None:
    one_error(run(store, "--commit", "nope", "--", "true"), "--commit needs --image")
    one_error(run(store, "--image", "busybox", "--commit", "Bad Name", "--", "true"), "--commit: ")
    assert leftovers(store) == []


def test_disk_bounds_a_step(store: Path, tmp_path: Path) -> None:
    # Each file is within the limit (which also caps one file's size): the layer as a whole is not,
    # and the third write fails as it is made.
    text = "FROM busybox\nRUN for f in a b c; do dd if=/dev/zero of=/$f bs=1024 count=60 || exit 3; done\n"
    result = build(store, tmp_path, text, "-t", "toobig", "--disk", "100K")
    one_error(result, "Containerfile:2: RUN failed: exit status 3 (the run filled its writable layer (--disk 100.0KiB)")
    assert "No space left on device" in result.stderr
    assert image(store, "inspect", "toobig").returncode == 125
    assert leftovers(store) == []


@pytest.mark.parametrize(("text", "start"), [
    ("FROM busybox\nFROB x\n", "Containerfile:2: unknown instruction 'FROB'"),
    ("FROM busybox\nEXPOSE 80\n", "Containerfile:2: EXPOSE is not supported"),
    ("FROM nope\n", "Containerfile:1: FROM nope: image 'nope' not found"),
    ("FROM host\n", "Containerfile:1: FROM host: the host image has no layers"),
    ("RUN true\n", "Containerfile:1: RUN before FROM"),
    ("FROM busybox\nRUN exit 3\n", "Containerfile:2: RUN failed: exit status 3"),
    ("FROM busybox\nCOPY ../etc/passwd /x\n", "Containerfile:2: COPY ../etc/passwd: '..' is not allowed"),
    ("FROM busybox\nCOPY out /x\n", "Containerfile:2: COPY out: a symlink leads outside the build context"),
    ("FROM busybox\nCOPY --chown=1 a /x\n", "Containerfile:2: COPY --chown is not supported"),
    ("FROM busybox\nFROM busybox\n", "Containerfile:2: a second FROM"),
])
def test_bad_builds_are_one_error_and_leave_nothing(store: Path, tmp_path: Path, text: str, start: str) -> None:
    (tmp_path / "out").symlink_to("/etc")
    before = sorted(os.listdir(store / "layers" / "sha256"))
    one_error(build(store, tmp_path, text, "-t", "broken"), start)
    assert image(store, "inspect", "broken").returncode == 125
    assert leftovers(store) == []
    if "RUN" not in text:  # nothing ran: nothing new in the store
        assert sorted(os.listdir(store / "layers" / "sha256")) == before


def test_parser_rules() -> None:
    instructions = parse("# c\nfrom  busybox\nRUN a \\\n  # inside\n  b\nCMD [\"x\", \"y\"]\nCMD [not json\n")
    assert [(i.line, i.keyword, i.args) for i in instructions] == [
        (2, "FROM", "busybox"), (3, "RUN", "a   b"), (6, "CMD", '["x", "y"]'), (7, "CMD", "[not json")]
    assert instructions[2].exec_form == ("x", "y") and instructions[3].exec_form is None
    for bad in ("", "FROM\n", "RUN <<EOF\nx\nEOF\n", "ONBUILD RUN x\n"):
        with pytest.raises(ContainerfileError):
            parse(bad)


def test_fuzz_containerfile(tmp_path: Path) -> None:
    run_harness("containerfile", tmp_path)
