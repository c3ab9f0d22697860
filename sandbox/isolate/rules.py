"""isolate's directory rules (-d, -D) and environment rules (-e, -E), as isolate's rules.c
parses them, and what they become in an sbx Spec.

A directory rule is `IN[=OUT][:opt...]`: OUT outside (absolute, or `./` from the box
directory) shown at /IN inside; `IN=` removes a rule; giving IN again replaces its rule in
place.  isolate's defaults: `box=./box:rw bin dev:dev:norec dev/shm=tmpfs:fs:rw lib
lib64:maybe proc=proc:fs tmp:tmp usr`.  In sbx the host's /usr, /bin, /sbin and /lib* (read-only
to the program), a fresh /proc, a minimal /dev with its own /dev/shm and a fresh /tmp are
always there, so the rules naming exactly those add nothing; the others become binds and tmpfs
mounts.  As in isolate there is no /etc unless a rule binds one: sbx's own is hidden under an
empty tmpfs.  `noexec` is a Landlock noexec path; `dev` and `norec` change nothing (sbx's binds are
nodev and recursive); of `fs` filesystems, tmpfs is a fresh tmpfs, proc and devpts are sbx's own,
sysfs is not offered.
"""

from __future__ import annotations

import os

from ..model.frozen import dataclass
from ..model.spec import Mount

FLAGS = ("rw", "noexec", "fs", "maybe", "dev", "tmp", "norec")
FILESYSTEMS = ("proc", "sysfs", "tmpfs", "devpts")
DEFAULTS = ("box=./box:rw", "bin", "dev:dev:norec", "dev/shm=tmpfs:fs:rw", "lib", "lib64:maybe", "proc=proc:fs",
            "tmp:tmp", "usr")
HOST_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")  # the host image's own (rootfs/plan.py)
SBX_OWN = ("/tmp", "/dev/shm")  # fresh tmpfs mounts in every sbx sandbox
BUILTIN_ENV = (("LIBC_FATAL_STDERR_", "1"),)
EMPTY_ETC_SIZE = 64 * 1024


class RuleError(ValueError):
    """A rule isolate refuses; str() is isolate's reason."""


@dataclass(frozen=True)
class DirRule:
    inside: str                  # relative, sanitized
    outside: str | None          # None: the rule is removed
    flags: frozenset[str] = frozenset()
    default: bool = False        # one of isolate's defaults (-D drops it)


@dataclass(frozen=True)
class EnvRule:
    var: str
    value: str | None            # None: inherit; "": remove


def _sanitize(path: str) -> str:
    path = path.lstrip("/")
    if not path or ".." in path.split("/"):
        raise RuleError("Invalid path")
    return path


def parse_dir(text: str, default: bool = False) -> DirRule:
    """One -d argument -> its rule; RuleError with isolate's reason."""
    spec, *options = text.split(":")
    flags = set()
    for option in options:
        if option not in FLAGS:
            raise RuleError(f"Unknown option '{option}'")
        flags.add(option)
    inside, eq, outside = spec.partition("=")
    if "fs" in flags and "tmp" in flags:
        raise RuleError("Flags 'fs' and 'tmp' are mutually exclusive")
    out: str | None
    if "fs" in flags:
        if not eq:
            raise RuleError("Missing filesystem name")
        if outside not in FILESYSTEMS:
            raise RuleError("This filesystem is not supported")
        out = outside
    elif "tmp" in flags:
        if eq:
            raise RuleError("Temporary directory mounts do not have a right-hand side")
        out, flags = "./tmp/" + inside.replace("/", ":"), flags | {"rw"}
    elif eq:
        if outside and not outside.startswith(("/", "./")):
            raise RuleError("Right-hand side must start with '/' or './'")
        out = outside or None
    else:
        out = "/" + inside.lstrip("/")
    return DirRule(_sanitize(inside), out, frozenset(flags), default)


def set_dir(rules: list[DirRule], text: str, default: bool = False) -> list[DirRule]:
    """`rules` with the rule of `text` added, or replacing the one for the same IN in its place."""
    rule = parse_dir(text, default)
    out = list(rules)
    for index, old in enumerate(out):
        if old.inside == rule.inside:
            out[index] = rule
            return out
    out.append(rule)
    return out


def default_dirs() -> list[DirRule]:
    rules: list[DirRule] = []
    for text in DEFAULTS:
        rules = set_dir(rules, text, default=True)
    return rules


@dataclass(frozen=True)
class Layout:
    """What the rules make of a sandbox: its mounts, Landlock noexec paths, and notes for -v."""

    mounts: tuple[Mount, ...]
    noexec: tuple[str, ...]
    notes: tuple[str, ...]


def layout(rules: tuple[DirRule, ...], with_defaults: bool, box_path: str, work: str) -> Layout:
    """The rules -> sbx mounts.  `box_path`: the box directory (OUT `./x` is under it, and its
    `box` is `work`, the directory sbx mounts at /box)."""
    mounts: list[Mount] = []
    noexec: list[str] = []
    notes: list[str] = []
    for rule in rules:
        if (rule.default and not with_defaults) or rule.outside is None:
            continue
        target = os.path.normpath("/" + rule.inside)
        flags = rule.flags
        if "fs" in flags:
            if rule.outside == "tmpfs" and target not in SBX_OWN:
                mounts.append(Mount(target=target, mode="tmpfs"))
            elif not (rule.outside == "proc" and target == "/proc" or rule.outside == "tmpfs"
                      or rule.outside == "devpts" and target == "/dev/pts"):
                notes.append(f"--dir={rule.inside}: sbx does not mount {rule.outside} there (skipped)")
            continue
        if "tmp" in flags:
            if target not in SBX_OWN:
                mounts.append(Mount(target=target, mode="tmpfs"))
            continue
        source = _outside(rule.outside, box_path, work)
        if "maybe" in flags and not os.path.isdir(source):
            notes.append(f"Not binding {rule.outside} on {rule.inside} (does not exist)")
            continue
        if target == "/dev" and source == "/dev" or (target == source and rule.inside in HOST_DIRS
                                                      and "rw" not in flags):
            continue  # sbx's own /dev, the host image's directories
        mounts.append(Mount(target=target, mode="rw" if "rw" in flags else "ro", source=source))
        if "noexec" in flags:
            noexec.append(target)
    if not any(mount.target == "/etc" for mount in mounts):
        # isolate's sandbox has no /etc unless a rule brings one: an empty one hides sbx's own
        # (rules below it, as CMS's /etc/alternatives, still bind into it).
        mounts.insert(0, Mount(target="/etc", mode="tmpfs", size=EMPTY_ETC_SIZE))
    return Layout(tuple(mounts), tuple(noexec), tuple(notes))


def _outside(outside: str, box_path: str, work: str) -> str:
    if not outside.startswith("./"):
        return os.path.normpath(outside)
    parts = [p for p in outside[2:].split("/") if p and p != "."]
    if parts and parts[0] == "box":
        return os.path.normpath(os.path.join(work, *parts[1:]))
    return os.path.normpath(os.path.join(box_path, *parts))


def parse_env(text: str) -> EnvRule | None:
    """-E VAR (inherit), VAR=VAL (set), VAR= (remove); None for `=...` (isolate refuses it)."""
    var, eq, value = text.partition("=")
    if eq and not var:
        return None
    return EnvRule(var, value if eq else None)


def environment(rules: tuple[EnvRule, ...], full: bool, environ: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """isolate's setup_environment(): the caller's whole environment with -e (else none), then
    LIBC_FATAL_STDERR_=1 and the -E rules in order."""
    env = dict(environ) if full else {}
    for rule in (*(EnvRule(var, value) for var, value in BUILTIN_ENV), *rules):
        env.pop(rule.var, None)
        if rule.value is None:
            if rule.var in environ:
                env[rule.var] = environ[rule.var]
        elif rule.value:
            env[rule.var] = rule.value
    return tuple((var, value) for var, value in env.items() if var and "\0" not in var + value)
