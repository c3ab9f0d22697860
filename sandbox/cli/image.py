"""`sbx image COMMAND`: pull, import, build, ls, inspect, rm, tag, prune.

Every command takes `--root DIR` (default $SBX_ROOT, else $XDG_DATA_HOME/sbx),
before or after the command name.  Errors: one `sbx: error: ...` line, exit 125.
"""

from __future__ import annotations

import os
import sys

from ..errors import EXIT_SBX, SbxError, UsageError
from ..image.ref import short_id, short_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..image import extract
    from ..image.store import Store
    from ..model.result import Result
    from ..model.spec import Spec

USAGE = """usage: sbx image [--root DIR] COMMAND ...

Manage the local image store (default $XDG_DATA_HOME/sbx, or $SBX_ROOT).

commands:
  pull [--platform OS/ARCH[/VARIANT]] [--insecure] [--username USER --password-stdin] [LIMITS] [-q] REF
                         pull from a registry (Docker Hub for short names; HTTP
                         for localhost/127.0.0.1 and --insecure, else HTTPS;
                         credentials also from $SBX_REGISTRY_AUTH=user:pass)
  push [--from REPO] [--chunk-size SIZE] [--insecure] [--username USER --password-stdin] [-q] NAME REF
                         push a stored image to a registry as REF (HOST/REPO:TAG); prints
                         REF@DIGEST, the name workers pull it by; --from: a repository of the
                         same registry to mount blobs from
  import [--name NAME] [--platform OS/ARCH[/VARIANT]] [LIMITS] [-q] FILE|DIR|-
                         import a docker archive (docker save) or an OCI layout
                         (directory or tar; plain, gzip or zstd; '-' for stdin)
                         LIMITS, against decompression bombs: --max-ratio N (a
                         layer may expand to N times its compressed size, or
                         16M if more; default 100, 0: off), --max-layer-size
                         SIZE (default 8G), --max-size SIZE (all the layers of
                         one import or pull; default 16G)
  build -t NAME [-f FILE] [--build-arg NAME=VALUE]... [--no-cache] [--network none|pasta]
        [--profile NAME] [--disk SIZE] [LIMITS] [-q] [CONTEXT]
                         build from a Containerfile (default CONTEXT/Containerfile,
                         else Dockerfile; CONTEXT defaults to .); each RUN runs in a
                         sandbox of the 'build' profile, without network by default;
                         LIMITS bound what ADD extracts from an archive
  ls [-q]                list images (-q: names only)
  inspect NAME...        the stored records, as JSON
  rm NAME...             forget images (their layers go at the next prune)
  tag SOURCE TARGET      give an image another name
  prune                  remove layers no image uses, and failed imports' leftovers
"""

REPEATABLE = ("--build-arg",)
LIMIT_OPTIONS = ("--max-ratio", "--max-layer-size", "--max-size")

# command -> (options taking a value, switches)
COMMANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pull": (("--platform", "--username", *LIMIT_OPTIONS), ("-q", "--quiet", "--insecure", "--password-stdin")),
    "push": (("--from", "--chunk-size", "--username"), ("-q", "--quiet", "--insecure", "--password-stdin")),
    "import": (("--name", "--platform", *LIMIT_OPTIONS), ("-q", "--quiet")),
    "build": (("-t", "--tag", "-f", "--file", "--build-arg", "--network", "--profile", "--disk", *LIMIT_OPTIONS),
              ("-q", "--quiet", "--no-cache")),
    "ls": ((), ("-q", "--quiet")),
    "list": ((), ("-q", "--quiet")),
    "inspect": ((), ()),
    "rm": ((), ()),
    "tag": ((), ()),
    "prune": ((), ()),
}


Options = dict[str, "str | bool | list[str]"]


def parse(args: list[str]) -> tuple[str, Options, list[str], str | None]:
    """(command, options, positional arguments, --root); a REPEATABLE option's values are a list."""
    root: str | None = None
    command: str | None = None
    options: Options = {}
    positional: list[str] = []
    i = 0
    only_positional = False
    while i < len(args):
        arg = args[i]
        i += 1
        if only_positional or (not arg.startswith("-") or arg == "-"):
            if command is None:
                command = arg
                if command not in COMMANDS:
                    raise UsageError(f"unknown image command {command!r} (see 'sbx image --help')")
            else:
                positional.append(arg)
            continue
        if arg == "--":
            only_positional = True
            continue
        if arg in ("-h", "--help"):
            raise _Help()
        name, eq, value = arg.partition("=")
        valued, switches = COMMANDS.get(command or "", ((), ()))
        if name == "--root" or name in valued:
            if not eq:
                if i >= len(args):
                    raise UsageError(f"{name} needs a value")
                value = args[i]
                i += 1
            if name == "--root":
                root = value
            elif name in REPEATABLE:
                values = options.setdefault(name, [])
                assert isinstance(values, list)
                values.append(value)
            else:
                options[name] = value
        elif name in switches and not eq:
            options[name] = True
        else:
            raise UsageError(f"unknown option {name!r}" + (f" for 'sbx image {command}'" if command else ""))
    if command is None:
        raise _Help()
    return command, options, positional, root


class _Help(Exception):
    pass


def enter_ranges() -> None:
    """Go on as root of a ranged user namespace when the caller has subordinate ids, so
    extraction keeps owners and removal can delete what other ids own (idmap.py).
    SBX_ID_RANGES=0 keeps the single mapping."""
    from ..kernel import idmap

    if os.environ.get("SBX_ID_RANGES") == "0" or idmap.inside_count():
        return
    ranges = idmap.available()
    if ranges is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        idmap.enter(ranges)


def run_and_save(spec: Spec, name: str, root: str | None, run_spec: Callable[[Spec], Result]) -> Result:
    """`sbx run --commit NAME`: the run, then its writable layer saved as the image NAME."""
    from ..image import commit

    enter_ranges()  # the new layer may hold files of other ids: read and store it as their root
    committed = commit.run_and_commit(spec, name, root, run_spec, os.environ)
    for line in committed.warnings:
        sys.stderr.write(f"sbx: warning: {line}\n")
    if committed.image is not None:
        sys.stderr.write(f"sbx: saved image {short_name(committed.image)} ({short_id(committed.id)})\n")
    return committed.result


def main(args: list[str]) -> int:
    try:
        return dispatch(args)
    except _Help:
        sys.stdout.write(USAGE)
        return 0
    except SbxError as exc:
        sys.stderr.write(f"sbx: error: {exc}\n")
        return EXIT_SBX
    except OSError as exc:
        sys.stderr.write(f"sbx: error: {exc.filename + ': ' if exc.filename else ''}{exc.strerror}\n")
        return EXIT_SBX
    except KeyboardInterrupt:
        return 130


def dispatch(args: list[str]) -> int:
    command, options, positional, root = parse(args)
    profile_settings = None
    if command == "build":
        # Read as the caller, before the ranged namespace: there the host root's files (the
        # shipped profiles) are nobody's, and the profile owner check would refuse them.
        profile_settings = _build_profile(options)
    if command in ("pull", "push", "import", "build", "rm", "prune"):
        enter_ranges()
    from ..image.store import Store

    store = Store(root, environ=os.environ)
    quiet = bool(options.get("-q") or options.get("--quiet"))
    if command == "pull":
        return cmd_pull(store, options, positional, quiet)
    if command == "push":
        return cmd_push(store, options, positional, quiet)
    if command == "import":
        return cmd_import(store, options, positional, quiet)
    if command == "build":
        return cmd_build(store, options, positional, quiet, profile_settings)
    if command in ("ls", "list"):
        _arity(command, positional, 0, 0)
        return cmd_ls(store, quiet)
    if command == "inspect":
        _arity(command, positional, 1, None)
        return cmd_inspect(store, positional)
    if command == "rm":
        _arity(command, positional, 1, None)
        return cmd_rm(store, positional)
    if command == "tag":
        _arity(command, positional, 2, 2)
        return cmd_tag(store, positional[0], positional[1])
    _arity(command, positional, 0, 0)
    return cmd_prune(store)


def _arity(command: str, positional: list[str], low: int, high: int | None) -> None:
    if len(positional) < low or (high is not None and len(positional) > high):
        raise UsageError(f"'sbx image {command}': wrong number of arguments (see 'sbx image --help')")


def import_limits(options: Options) -> extract.Limits:
    """The expansion caps of --max-ratio, --max-layer-size and --max-size (the rest: extract.Limits's defaults)."""
    from ..model.frozen import replace
    from ..model.units import parse_size
    from ..image import extract

    limits = extract.Limits()
    ratio = options.get("--max-ratio")
    if isinstance(ratio, str):
        if not (ratio.isascii() and ratio.isdigit()) or len(ratio) > 9:
            raise UsageError(f"--max-ratio {ratio!r}: expected a whole number (0: no ratio limit)")
        limits = replace(limits, max_ratio=int(ratio))
    for flag, key in (("--max-layer-size", "max_bytes"), ("--max-size", "max_image")):
        value = options.get(flag)
        if isinstance(value, str):
            try:
                size = parse_size(value)
            except ValueError as exc:
                raise UsageError(f"{flag}: {exc}") from None
            if size <= 0:
                raise UsageError(f"{flag}: must be more than 0")
            limits = replace(limits, **{key: size})
    return limits


def cmd_import(store: Store, options: Options, positional: list[str], quiet: bool) -> int:
    from ..image import oci
    _arity("import", positional, 1, 1)
    limits = import_limits(options)
    name = options.get("--name")
    platform = options.get("--platform")

    def log(text: str) -> None:
        if not quiet:
            sys.stderr.write(f"sbx: {text}\n")

    records = oci.import_images(store, positional[0], name=name if isinstance(name, str) else None,
                                platform=oci.parse_platform(platform) if isinstance(platform, str) else None,
                                limits=limits, log=log)
    for record in records:
        sys.stdout.write(f"{short_name(str(record['name']))} {short_id(str(record['id']))}\n")
    return 0


def _build_profile(options: Options) -> tuple[tuple[str, object], ...]:
    from ..config import profile

    name = options.get("--profile")
    try:
        return profile.resolve(name if isinstance(name, str) else "build", cwd=os.getcwd(),
                               environ=os.environ).settings
    except profile.ProfileError as exc:
        raise UsageError(str(exc)) from None


def cmd_build(store: Store, options: Options, positional: list[str], quiet: bool,
              profile_settings: tuple[tuple[str, object], ...] | None = None) -> int:
    from ..image import build
    _arity("build", positional, 0, 1)

    def value(*names: str) -> str | None:
        for name in names:
            found = options.get(name)
            if isinstance(found, str):
                return found
        return None

    tag = value("-t", "--tag")
    if tag is None:
        raise UsageError("'sbx image build' needs -t NAME")
    context = positional[0] if positional else "."
    file = value("-f", "--file") or build.default_file(context)
    disk = value("--disk")
    disk_bytes = None
    if disk is not None:
        from ..model.units import parse_size

        try:
            disk_bytes = parse_size(disk)
        except ValueError as exc:
            raise UsageError(f"--disk: {exc}") from None
    build_args = options.get("--build-arg", [])
    assert isinstance(build_args, list)

    def log(text: str) -> None:
        if not quiet or text.startswith("warning: "):
            sys.stderr.write(f"sbx: {text}\n")

    record = build.build(store, build.Options(
        file=file, tag=tag, context=context, build_args=build.parse_build_args(build_args, os.environ),
        no_cache=bool(options.get("--no-cache")), network=value("--network") or "none",
        profile=value("--profile") or "build", disk=disk_bytes, limits=import_limits(options),
        profile_settings=profile_settings), log, os.environ)
    sys.stdout.write(f"{short_name(str(record['name']))} {short_id(str(record['id']))}\n")
    return 0


def cmd_pull(store: Store, options: Options, positional: list[str], quiet: bool) -> int:
    from ..image import oci, pull
    _arity("pull", positional, 1, 1)
    limits = import_limits(options)
    platform = options.get("--platform")
    credentials = _credentials(options)

    def log(text: str) -> None:
        sys.stderr.write(f"sbx: {text}\n")

    record = pull.pull(store, positional[0],
                       platform=oci.parse_platform(platform) if isinstance(platform, str) else None,
                       insecure=bool(options.get("--insecure")), credentials=credentials,
                       progress="quiet" if quiet else "tty" if sys.stderr.isatty() else "lines", log=log,
                       limits=limits)
    sys.stdout.write(f"{short_name(str(record['name']))} {short_id(str(record['id']))}\n")
    return 0


def cmd_push(store: Store, options: Options, positional: list[str], quiet: bool) -> int:
    from ..image import push
    from ..model.units import parse_size

    _arity("push", positional, 2, 2)
    chunk = options.get("--chunk-size")
    source = options.get("--from")

    def log(text: str) -> None:
        if not quiet:
            sys.stderr.write(f"sbx: {text}\n")

    try:
        chunk_size = parse_size(chunk) if isinstance(chunk, str) else push.CHUNK
    except ValueError as exc:
        raise UsageError(f"--chunk-size: {exc}") from None
    if chunk_size < 1:
        raise UsageError("--chunk-size must be at least 1 byte")
    pushed, _counts = push.push(store, positional[0], positional[1], insecure=bool(options.get("--insecure")),
                                credentials=_credentials(options), source=source if isinstance(source, str) else None,
                                chunk=chunk_size,
                                log=log)
    sys.stdout.write(f"{pushed}\n")
    return 0


def _credentials(options: Options) -> tuple[str, str] | None:
    """--username with --password-stdin, else $SBX_REGISTRY_AUTH, else None."""
    from ..image import pull

    username = options.get("--username")
    credentials = pull.credentials_from_env(os.environ)
    if options.get("--password-stdin"):
        if not isinstance(username, str) or not username:
            raise UsageError("--password-stdin needs --username")
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise UsageError("--password-stdin: no password on stdin")
        credentials = (username, password)
    elif isinstance(username, str):
        raise UsageError("--username needs --password-stdin (or use $SBX_REGISTRY_AUTH=user:pass)")
    return credentials


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{size}B"


def cmd_ls(store: Store, quiet: bool) -> int:
    with store.lock(False):
        records = list(store.all_images())
    if quiet:
        sys.stdout.write("".join(f"{short_name(str(r['name']))}\n" for r in records))
        return 0
    rows = [("NAME", "ID", "LAYERS", "SIZE", "PLATFORM")]
    for r in records:
        layers = r.get("layers")
        size = r.get("size")
        platform = f"{r.get('os') or '?'}/{r.get('architecture') or '?'}" + (f"/{r['variant']}" if r.get("variant")
                                                                              else "")
        rows.append((short_name(str(r["name"])), short_id(str(r.get("id", ""))),
                     str(len(layers) if isinstance(layers, list) else "?"),
                     human(size) if isinstance(size, int) else "?", platform))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        sys.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")
    return 0


def cmd_inspect(store: Store, names: list[str]) -> int:
    import json

    from ..image import find
    with store.lock(False):
        records = [find(store, name) for name in names]
    sys.stdout.write(json.dumps(records, indent=2, sort_keys=True) + "\n")
    return 0


def cmd_rm(store: Store, names: list[str]) -> int:
    from ..image import find
    with store.lock(True):
        records = [find(store, name) for name in names]  # all or nothing
        for record in records:
            store.remove_image(str(record["name"]))
            sys.stdout.write(f"removed {short_name(str(record['name']))}\n")
    return 0


def cmd_tag(store: Store, source: str, target: str) -> int:
    from ..image import find, ref
    new_name = str(ref.parse(target))
    with store.lock(True):
        record = dict(find(store, source))
        record["name"] = new_name
        store.write_image(record)
    return 0


def cmd_prune(store: Store) -> int:
    removed, freed = store.prune()
    sys.stdout.write(f"removed {len(removed)} layer{'s' if len(removed) != 1 else ''}, freed {human(freed)}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover - `python -m sandbox.cli.image ...`: the tests call it so
    raise SystemExit(main(sys.argv[1:]))
