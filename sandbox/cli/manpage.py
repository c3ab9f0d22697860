"""`sbx man`: the manual page sbx(1), as roff, generated from the tables the parsers use.

Its commands, subcommands and their options are completion.tree() (the top-level usage's list,
config/schema.py's rows for `sbx run`, the other commands' own tables and usage texts); the
profile keys are the schema's rows with a [section], each with what its check accepts.  The
wheel ships the page as man/sbx.1 (<prefix>/share/man/man1/sbx.1), made by `sbx man >
man/sbx.1`; tests/test_manpage.py fails when the file and a fresh page differ.  Not on the run path.
"""

from __future__ import annotations

import sys

from .. import __version__
from ..config import schema
from ..config.search import SYSTEM_DIR
from ..errors import EXIT_NOEXEC, EXIT_NOTFOUND, EXIT_SBX
from .completion import Command, Option, tree

# The variables sbx reads, for ENVIRONMENT: tests/test_manpage.py checks that every "SBX_..." name
# in the package's source is here or in INTERNAL.
ENVIRONMENT = {
    "SBX_ROOT": "The image and box store (default: $XDG_DATA_HOME/sbx, else ~/.local/share/sbx); --root overrides it.",
    "SBX_CGROUP": "A delegated cgroup v2 directory to create run cgroups in (as --cgroup).",
    "SBX_NO_SCOPE": "Set to 1: never re-run in a transient systemd user scope to get a delegated cgroup.",
    "SBX_ID_RANGES": "Set to 0: map only the caller's own ids, even where subordinate ids exist.",
    "SBX_USERNET": "The user-mode network helper for --network pasta: pasta (default) or slirp4netns.",
    "SBX_REGISTRY_AUTH": "USER:PASSWORD for registries that sbx image pull logs in to.",
    "SBX_LANDLOCK": "Use at most Landlock ABI N (0: none), for testing.",
    "SBX_DEBUG": "Set: set-up failures with their traceback, and everything network helpers say.",
    "SBX_STAMPS": "Set: each step of a run and its milliseconds since sbx started, as sbx: stamp lines on stderr.",
    "XDG_CONFIG_HOME": "Where your profiles (sbx/profiles/) and trust list (sbx/trusted) are (default ~/.config).",
    "XDG_DATA_HOME": "The default store's parent (default ~/.local/share).",
}
INTERNAL = ("SBX_SCOPE",)  # set by sbx for its own re-run in a systemd scope

DESCRIPTION = """\
sbx runs a command in new user, mount, pid, ipc, uts, cgroup and network namespaces, on a
disposable writable layer over an image (by default \\fBhost\\fR: the host's /usr read-only),
under hard limits: cgroup v2 where it is delegated (else rlimits and the supervisor's own
counting, said on stderr), seccomp, Landlock, and no network unless asked.  It needs no root,
no daemon and no setuid binary.  A profile (TOML) presets any option; options override it."""


def escape(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, no line starting a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _synopsis(text: str) -> str:
    """A usage synopsis, options bold, the rest as written."""
    words = []
    for word in text.split():
        bare = word.strip("[]")
        if bare.startswith("-") and bare != "-":
            words.append(word.replace(bare, f"\\fB{escape(bare)}\\fR"))
        else:
            words.append(escape(word))
    return " ".join(words)


def _option(option: Option) -> list[str]:
    flags = ", ".join(f"\\fB{escape(flag)}\\fR" for flag in option.flags)
    metavar = f" \\fI{escape(option.metavar)}\\fR" if option.metavar else ""
    help = option.help + (" (repeatable)" if option.repeatable else "")
    return [".TP", flags + metavar, escape(help[:1].upper() + help[1:]) if help else ""]


def _command(command: Command, top: bool = True) -> list[str]:
    """A command's entry: its synopsis and help; a top-level one's options (`sbx run`'s have a
    section of their own; a subcommand's are in its synopsis) and subcommands, indented."""
    lines = [".TP", f"\\fB{escape(command.name)}\\fR" + (f" {_synopsis(command.synopsis)}" if command.synopsis else "")]
    lines.append(escape(command.help[:1].upper() + command.help[1:]) if command.help else "")
    options = [option for option in command.options if top and command.name != "run" and option.help
               and option.flags != ("-h", "--help")]
    if options or command.subcommands:
        lines.append(".RS")
        for option in options:
            lines += _option(option)
        for sub in command.subcommands:
            lines += _command(sub, top=False)
        lines.append(".RE")
    return lines


def _profile_keys() -> list[str]:
    lines = []
    for section in schema.SECTIONS:
        lines += [".TP", f"\\fB[{section}]\\fR", ".RS"]
        for name, setting in schema.profile_keys(section).items():
            flag = f" (\\fB{escape(setting.flag)}\\fR)" if setting.flags else ""
            lines += [".TP", f"\\fB{escape(name)}\\fR{flag}", escape(_accepts(setting))]
        lines.append(".RE")
    return lines


def _accepts(setting: schema.Setting) -> str:
    """What the row's check accepts, as its refusal says it ("a size such as 512K, ...")."""
    assert setting.check is not None  # rows with a [section] have one
    try:
        setting.check(object())  # a value of no TOML type: every check refuses it
    except schema.Bad as bad:
        return str(bad.args[0])[:1].upper() + str(bad.args[0])[1:] + "."
    raise AssertionError(f"{setting.key}: the check accepted a non-TOML value")


def render(usage: str) -> str:
    """The page; `usage` is cli/main.py's USAGE."""
    top = tree(usage)
    run = next(command for command in top.subcommands if command.name == "run")
    out = [
        '.\\" Generated by `sbx man` from sbx\'s option tables: do not edit (sbx man > man/sbx.1).',
        f'.TH SBX 1 "" "sbx {escape(__version__)}" "User Commands"',
        ".SH NAME", "sbx \\- run untrusted code in a rootless sandbox under hard limits",
        ".SH SYNOPSIS",
        f"\\fBsbx run\\fR {_synopsis(run.synopsis)}", ".br",
        "\\fBsbx\\fR \\fICOMMAND\\fR ...", ".br",
        "\\fBsbx\\fR [\\fB\\-\\-version\\fR] [\\fB\\-\\-help\\fR]",
        ".SH DESCRIPTION", *DESCRIPTION.splitlines(),
        ".SH COMMANDS",
    ]
    for command in top.subcommands:
        out += _command(command)
    out += [".SH RUN OPTIONS", "The options of \\fBsbx run\\fR (and \\fBsbx box run\\fR)."]
    for option in run.options:
        out += _option(option)
    out += [".SH PROFILES",
            "A profile is a TOML file of these tables; a key with an option means the same as it.",
            "Besides them: \\fBdescription\\fR, \\fBextends\\fR (a profile to start from) and "
            "\\fB[[mount]]\\fR tables (\\fBsbx profile show default\\fR shows a whole profile).",
            *_profile_keys(),
            ".SH EXIT STATUS",
            "The command's own status; 128+\\fIN\\fR when it died of signal \\fIN\\fR;",
            f"{EXIT_SBX} when sbx itself failed (a bad option or profile, a set-up failure: one line",
            "\\fBsbx: error: ...\\fR on stderr);",
            f"{EXIT_NOEXEC} when the command could not be executed; {EXIT_NOTFOUND} when it was not found.",
            ".SH ENVIRONMENT"]
    for name, text in ENVIRONMENT.items():
        out += [".TP", f"\\fB{escape(name)}\\fR", escape(text)]
    out += [".SH FILES",
            ".TP", "\\fB$XDG_CONFIG_HOME/sbx/profiles/\\fR, \\fB" + escape(SYSTEM_DIR) + "/\\fR,"
            " \\fI<prefix>\\fB/share/sbx/profiles/\\fR",
            "Profiles by name, first match wins (the last: the shipped ones).",
            ".TP", "\\fB./.sbx/profiles/\\fR",
            "A project's profiles, only with \\fB\\-\\-project\\-profiles\\fR or after \\fBsbx profile trust\\fR.",
            ".TP", "\\fB$XDG_CONFIG_HOME/sbx/trusted\\fR", "The directories whose project profiles you trust.",
            ".TP", "\\fB$SBX_ROOT\\fR, \\fB$XDG_DATA_HOME/sbx/\\fR", "Images, layers and boxes.",
            ".SH SEE ALSO",
            "\\fBbwrap\\fR(1), \\fBpasta\\fR(1), \\fBslirp4netns\\fR(1), \\fBnewuidmap\\fR(1),"
            " \\fBuser_namespaces\\fR(7), \\fBcgroups\\fR(7), \\fBseccomp\\fR(2), \\fBlandlock\\fR(7)"]
    return "\n".join(out) + "\n"


def main(args: list[str], usage: str) -> int:
    """`sbx man`: the page on stdout (`sbx man | man -l -`)."""
    from ..errors import UsageError

    if args in (["-h"], ["--help"]):
        sys.stdout.write("usage: sbx man\n\nPrints the manual page sbx(1) as roff: sbx man | man -l -\n")
        return 0
    if args:
        raise UsageError(f"man: unexpected argument {args[0]!r} (see 'sbx man --help')")
    sys.stdout.write(render(usage))
    return 0
