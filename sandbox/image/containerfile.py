"""The Containerfile subset `sbx image build` reads: text -> instructions, and word/variable rules.

    FROM image [AS name]       ARG NAME[=default]       ENV NAME=value ...
    RUN command | ["exec", "form"]                       LABEL key=value ...
    COPY src... dest           ADD src... dest           WORKDIR /path
    USER uid[:gid] | name      CMD ...                   ENTRYPOINT ...

Lines end with `\\` to continue; `#` at the start of a line is a comment
(also between continued lines).  `$NAME`, `${NAME}`, `${NAME:-word}` and
`${NAME:+word}` expand in FROM, ARG, ENV, LABEL, WORKDIR, USER, COPY and
ADD, as in docker; RUN, CMD and ENTRYPOINT are left to the shell.  Anything
else (other instructions, flags such as `--chown`, heredocs) is an error
naming the line, so a file never builds into something it did not say.

Pure functions of their input, so the fuzz harness can drive them.
"""

from __future__ import annotations

import json

from ..model.frozen import dataclass
from .errors import ImageError

SUPPORTED = ("FROM", "RUN", "COPY", "ADD", "ENV", "WORKDIR", "USER", "CMD", "ENTRYPOINT", "ARG", "LABEL")
UNSUPPORTED = ("EXPOSE", "VOLUME", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "ONBUILD", "MAINTAINER")
EXEC_FORM = ("RUN", "CMD", "ENTRYPOINT", "COPY", "ADD")
MAX_SIZE = 1 << 20
MAX_NESTING = 8  # ${A:-${B:-...}}
NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


class ContainerfileError(ImageError):
    """A Containerfile that sbx cannot build: one line, naming the file and line."""


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str  # upper case
    args: str  # the text after the keyword, continuation lines joined
    exec_form: tuple[str, ...] | None = None  # a JSON array of strings, for RUN, CMD, ENTRYPOINT, COPY, ADD


def parse(text: str, name: str = "Containerfile") -> tuple[Instruction, ...]:
    if len(text) > MAX_SIZE:
        raise ContainerfileError(f"{name}: larger than {MAX_SIZE} bytes")
    if "\0" in text:
        raise ContainerfileError(f"{name}: contains a NUL byte")
    instructions = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # docker drops these inside continued instructions too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += raw.rstrip()[:-1]
            continue
        instructions.append(_instruction(pending + raw, start, name))
        pending = ""
    if pending:
        instructions.append(_instruction(pending, start, name))
    if not instructions:
        raise ContainerfileError(f"{name}: no instructions")
    return tuple(instructions)


def _instruction(text: str, line: int, name: str) -> Instruction:
    keyword, _, args = text.strip().partition(" ")
    if "\t" in keyword:
        keyword, _, rest = keyword.partition("\t")
        args = rest + " " + args
    keyword, args = keyword.upper(), args.strip()
    where = f"{name}:{line}"
    if keyword in UNSUPPORTED:
        raise ContainerfileError(f"{where}: {keyword} is not supported (sbx builds {', '.join(SUPPORTED)})")
    if keyword not in SUPPORTED:
        raise ContainerfileError(f"{where}: unknown instruction {keyword[:40]!r}")
    if not args:
        raise ContainerfileError(f"{where}: {keyword} needs an argument")
    if args.startswith("--"):
        flag = args.split()[0].partition("=")[0]
        raise ContainerfileError(f"{where}: {keyword} {flag[:40]} is not supported")
    if "<<" in args and keyword == "RUN" and args.lstrip().startswith("<<"):
        raise ContainerfileError(f"{where}: heredocs are not supported")
    exec_form = None
    if keyword in EXEC_FORM and args.startswith("["):
        try:
            value = json.loads(args)
        except (ValueError, RecursionError):
            value = None  # docker's rule: not JSON, so the shell form
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            if not value:
                raise ContainerfileError(f"{where}: {keyword} [] is empty")
            if any("\0" in v for v in value):
                raise ContainerfileError(f"{where}: a NUL byte in {keyword}")
            exec_form = tuple(value)
    return Instruction(line, keyword, args, exec_form)


# -- words and variables ------------------------------------------------------------------

def expand(text: str, variables: dict[str, str], where: str, depth: int = 0) -> str:
    """`text` with variables expanded and quotes and backslashes processed, as one word."""
    return "".join(_scan(text, variables, where, False, depth))


def words(text: str, variables: dict[str, str], where: str) -> list[str]:
    """`text` split on unquoted white space, each word expanded."""
    return _scan(text, variables, where, True, 0)


def _scan(text: str, variables: dict[str, str], where: str, split: bool, depth: int) -> list[str]:
    if depth > MAX_NESTING:
        raise ContainerfileError(f"{where}: variable references nested too deep")
    out: list[str] = []
    word: list[str] = []
    started = False
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote != "'" and c == "\\":
            if i + 1 < len(text):
                word.append(text[i + 1])
                started = True
            i += 2
            continue
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                word.append(c)
            i += 1
            continue
        if c in "'\"" and (not quote or c == quote):
            quote = "" if quote else c
            started = True
            i += 1
            continue
        if c == "$":
            value, i = _variable(text, i, variables, where, depth)
            word.append(value)
            started = True
            continue
        if split and not quote and c in " \t":
            if started:
                out.append("".join(word))
            word, started = [], False
            i += 1
            continue
        word.append(c)
        started = True
        i += 1
    if quote:
        raise ContainerfileError(f"{where}: unterminated {quote} quote")
    if started or not split:
        out.append("".join(word))
    return out


def _variable(text: str, i: int, variables: dict[str, str], where: str, depth: int) -> tuple[str, int]:
    """The value of the reference at text[i] (a '$'), and the index after it."""
    j = i + 1
    if j < len(text) and text[j] == "{":
        end = text.find("}", j)
        if end < 0:
            raise ContainerfileError(f"{where}: unterminated ${{...}}")
        body = text[j + 1:end]
        name, op, word = body, "", ""
        for candidate in (":-", ":+"):
            if candidate in body:
                name, _, word = body.partition(candidate)
                op = candidate
                break
        if not name or not set(name) <= NAME_CHARS or name[0].isdigit():
            raise ContainerfileError(f"{where}: bad variable reference ${{{body[:40]}}}")
        value = variables.get(name, "")
        if op == ":-" and not value:
            value = expand(word, variables, where, depth + 1)
        elif op == ":+":
            value = expand(word, variables, where, depth + 1) if value else ""
        return value, end + 1
    while j < len(text) and text[j] in NAME_CHARS and not (j == i + 1 and text[j].isdigit()):
        j += 1
    if j == i + 1:
        return "$", j  # a lone '$' is itself
    return variables.get(text[i + 1:j], ""), j


def pairs(text: str, variables: dict[str, str], where: str, keyword: str) -> list[tuple[str, str]]:
    """ENV/LABEL arguments: NAME=value ..., or ENV's old `NAME value with spaces`."""
    first = text.split(None, 1)
    if keyword == "ENV" and "=" not in first[0]:
        if len(first) < 2:
            raise ContainerfileError(f"{where}: ENV {first[0][:40]} needs a value")
        return [(check_name(first[0], where), expand(first[1], variables, where))]
    result = []
    for item in words(text, variables, where):
        key, eq, value = item.partition("=")
        if not eq:
            raise ContainerfileError(f"{where}: {keyword} expects NAME=VALUE, not {item[:40]!r}")
        result.append((check_name(key, where) if keyword == "ENV" else check_label(key, where), value))
    return result


def check_name(name: str, where: str) -> str:
    if not name or not set(name) <= NAME_CHARS or name[0].isdigit():
        raise ContainerfileError(f"{where}: {name[:40]!r} is not a variable name")
    return name


def check_label(key: str, where: str) -> str:
    if not key or not key.isprintable():
        raise ContainerfileError(f"{where}: bad label name {key[:40]!r}")
    return key


def shell_or_exec(instruction: Instruction) -> tuple[str, ...]:
    """RUN/CMD/ENTRYPOINT as an argv: the exec form, or the shell form through /bin/sh -c."""
    if instruction.exec_form is not None:
        return instruction.exec_form
    return ("/bin/sh", "-c", instruction.args)
