"""`sbx completion bash|zsh`: shell completion scripts, generated from the tables the parsers use.

The commands are the top-level usage's list (cli/main.py passes its USAGE: no import back up),
`sbx run`'s options the schema's rows (config/schema.py), `sbx image`'s its COMMANDS table and
the other commands' options their usage texts: a new flag or command completes without an edit
here.  `tree()` is the whole command line as values; the man page (manpage.py) reads it too.

Names that only exist at completion time (profiles, images, boxes) are asked of the `sbx` being
completed (`sbx profile list`, `sbx image ls -q`, `sbx box ls`).  Not on the run path.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, replace

from ..config import schema
from ..seccomp import POLICIES as SECCOMP_POLICIES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# What a value or operand is, for the shells to complete.
FILE, DIR, COMMAND, PROFILE, IMAGE, BOX, TEXT = "file", "dir", "command", "profile", "image", "box", ""
SHELLS = ("bash", "zsh")

# Setting keys whose value is one of a fixed set (tests/test_completion.py checks that each
# word passes the row's check): the only rows whose words are not readable off the table.
CHOICES: dict[str, tuple[str, ...]] = {"network.mode": schema.NETWORK_MODES, "seccomp.policy": SECCOMP_POLICIES}
# What `sbx run`'s other valued options name, by setting key, then by metavar.
RUN_VALUES = {"profile": PROFILE, "run.interactor_profile": PROFILE, "sandbox.image": IMAGE, "volume": FILE,
              "run.image_root": DIR, "run.cgroup": DIR, "run.interactor": COMMAND}
METAVARS = {"FILE": FILE, "DIR": DIR, "CONTEXT": DIR, "CMD": COMMAND, "FILE|DIR|-": FILE}
# Options of the other commands that name something, by flag.
OPTION_VALUES = {"--root": DIR, "--profile": PROFILE, "-f": FILE, "--file": FILE}
_CHOICE = "choice:"  # an Option.kind (or Command.operand) prefix: the words follow, space-separated


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    metavar: str  # "" for a switch
    help: str
    kind: str = TEXT  # what the value is: FILE, DIR, ..., or "choice:w1 w2"
    repeatable: bool = False


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    options: tuple[Option, ...] = ()
    subcommands: tuple[Command, ...] = ()
    operand: str = TEXT  # what the words after the options are
    synopsis: str = ""  # the usage line's arguments, for the man page


def tree(usage: str) -> Command:
    """The `sbx` command line; `usage` is cli/main.py's USAGE."""
    from ..warm.batch import USAGE as BATCH_USAGE
    from . import box, image, profile

    # Commands whose options and subcommands have a table or usage text of their own; the
    # others' options are read off their synopsis in `usage` (`worker --broker URL`).
    own: dict[str, dict[str, Any]] = {
        "run": {"options": run_options(), "operand": COMMAND},
        "image": {"options": (Option(("--root",), "DIR", "image store", DIR),),
                  "subcommands": _image_commands(image.USAGE, image.COMMANDS, image.REPEATABLE)},
        "box": {"subcommands": _box_commands(box.USAGE)},
        "profile": {"subcommands": _profile_commands(profile.USAGE)},
        "batch": {"options": _usage_options(BATCH_USAGE), "operand": FILE},
        "completion": {"operand": _CHOICE + " ".join(SHELLS)},
    }
    commands = [replace(Command(name, text, _bracketed(synopsis), synopsis=synopsis), **own.get(name, {}))
                for name, synopsis, text in _listed(usage, "commands:")]
    top = (Option(("--version",), "", "print sbx's version and exit"), Option(("-h", "--help"), "", "show help"))
    return Command("sbx", "", top, tuple(commands))


def run_options() -> tuple[Option, ...]:
    """`sbx run`'s options: the schema's rows with flags, in its order, then -h/--help."""
    options = []
    for setting in schema.SETTINGS:
        if not setting.flags:
            continue
        kind = RUN_VALUES.get(setting.key, METAVARS.get(setting.metavar, TEXT))
        if setting.key in CHOICES:
            kind = _CHOICE + " ".join(CHOICES[setting.key])
        options.append(Option(setting.flags, setting.metavar, setting.help, kind if setting.metavar else TEXT,
                              setting.read == "list"))
    options.append(Option(("-h", "--help"), "", "show this help"))
    return tuple(options)


def _listed(text: str, heading: str) -> list[tuple[str, str, str]]:
    """(name, synopsis, help) of each entry of a usage text's section: a line indented by two
    spaces, its help after a gap of two or more spaces, on that line or the more indented ones after."""
    entries: list[list[str]] = []
    inside = False
    for line in text.splitlines():
        if line.strip() == heading:
            inside = True
        elif inside and line.startswith("  ") and not line.startswith("   ") and line.strip():
            head, _, rest = line.strip().partition(" ")
            parts = re.split(r"\s{2,}", rest, maxsplit=1)
            entries.append([head, parts[0].strip(), parts[1].strip() if len(parts) > 1 else ""])
        elif inside and line.startswith("   ") and entries:
            # More of the synopsis (`[--profile NAME] ...` under `build -t NAME`), else of the help.
            field = 1 if line.strip().startswith("[") and not entries[-1][2] else 2
            entries[-1][field] = f"{entries[-1][field]} {line.strip()}".strip()
        elif inside and line.strip():
            inside = False
    return [(name, synopsis, help) for name, synopsis, help in entries]


def _first_sentence(text: str) -> str:
    return re.split(r"[;(]", text, maxsplit=1)[0].strip().rstrip(",")


# An option and its metavar as usage texts write them: `--root DIR`, `--platform OS/ARCH[/VARIANT]`,
# `--network none|pasta` (a choice), `-q`.
_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)(?: ([A-Z][\w/|:.=-]*(?:\[[^\]\s]*\])*|[a-z]+(?:\|[a-z]+)+))?")


def _flags(text: str) -> dict[str, str]:
    """Each option a synopsis or help text names -> its metavar ("" for a switch)."""
    found: dict[str, str] = {}
    for flag, metavar in _FLAG.findall(text):
        found[flag] = found.get(flag) or metavar
    return found


def _option(flag: str, metavar: str, values: dict[str, str] | None = None, repeatable: bool = False) -> Option:
    kind = (values or {}).get(flag, OPTION_VALUES.get(flag, METAVARS.get(metavar, TEXT)))
    if metavar.islower():  # none|pasta
        metavar, kind = "MODE", _CHOICE + metavar.replace("|", " ")
    return Option((flag,), metavar, "", kind if metavar else TEXT, repeatable)


def _bracketed(synopsis: str, values: dict[str, str] | None = None) -> tuple[Option, ...]:
    """The options a synopsis shows: `[--root DIR]`, `[-q]`, `--broker URL`."""
    return tuple(_option(flag, metavar, values) for flag, metavar in _flags(synopsis).items())


def _box_commands(usage: str) -> tuple[Command, ...]:
    """`sbx box`'s commands, their options read off their synopses."""
    from ..warm.box import MODES

    choices = {"--mode": _CHOICE + " ".join(MODES)}
    operands = {"create": TEXT, "run": BOX, "rm": BOX, "ls": TEXT}
    return tuple(Command(name, _first_sentence(text), _bracketed(synopsis, choices), operand=operands.get(name, TEXT),
                         synopsis=synopsis)
                 for name, synopsis, text in _listed(usage, "commands:"))


def _usage_options(usage: str) -> tuple[Option, ...]:
    """The "options:" section of a usage text (`sbx batch`'s): `-j, --jobs N   help`."""
    options = []
    for head, synopsis, text in _listed(usage, "options:"):
        words = f"{head} {synopsis}".replace(",", " ").split()
        flags = tuple(word for word in words if word.startswith("-"))
        metavar = next((word for word in words if not word.startswith("-")), "")
        kind = OPTION_VALUES.get(flags[-1], METAVARS.get(metavar, TEXT)) if metavar else TEXT
        options.append(Option(flags, metavar, text, kind))
    options.append(Option(("-h", "--help"), "", "show help"))
    return tuple(options)


def _image_commands(usage: str, table: dict[str, tuple[tuple[str, ...], tuple[str, ...]]],
                    repeatable: tuple[str, ...]) -> tuple[Command, ...]:
    """`sbx image`'s commands: their options from image.COMMANDS (what its parser accepts), their
    help and metavars from its usage text."""
    listed = {name: (synopsis, text) for name, synopsis, text in _listed(usage, "commands:")}
    operands = {"import": FILE, "build": DIR, "inspect": IMAGE, "rm": IMAGE, "tag": IMAGE}
    anywhere = _flags(" ".join(usage.split()))  # `--max-ratio N` is in import's help, pull takes it too
    commands = []
    for name, (valued, switches) in table.items():
        synopsis, text = listed.get(name, ("", ""))
        metavars = {**anywhere, **_flags(synopsis)}
        options = [_option(flag, metavars.get(flag) or "VALUE", repeatable=flag in repeatable) for flag in valued]
        options += [Option((flag,), "", "") for flag in switches]
        help = _first_sentence(text) if name in listed else f"the same as '{_alias(name, table)}'"
        commands.append(Command(name, help, tuple(options), operand=operands.get(name, TEXT), synopsis=synopsis))
    return tuple(commands)


def _alias(name: str, table: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]) -> str:
    """The command `name` (not in the usage text) shares its options with: `list` -> `ls`."""
    return next((other for other, options in table.items() if options == table[name] and other != name), name)


def _profile_commands(usage: str) -> tuple[Command, ...]:
    """`sbx profile`'s commands, one usage line each: `sbx profile show NAME   help`."""
    operands = {"show": PROFILE, "check": FILE, "trust": DIR, "untrust": DIR}
    project = Option(("--project-profiles",), "", "use ./.sbx/profiles/ this once")
    commands = []
    for match in re.finditer(r"sbx profile (\w+) ?(\S*)\s+(.+)", usage):
        name, synopsis, text = match.groups()
        options = (project,) if name in ("list", "show", "check") else ()
        commands.append(Command(name, text.strip(), options, operand=operands.get(name, TEXT), synopsis=synopsis))
    return tuple(commands)


# ------------------------------------------------------------------------------------ bash


def _walk(command: Command, path: str = "sbx") -> list[tuple[str, Command]]:
    """Every command with its path ("sbx image pull"), depth first."""
    out = [(path, command)]
    for sub in command.subcommands:
        out += _walk(sub, f"{path} {sub.name}")
    return out


def _sh_word(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def bash(command: Command) -> str:
    """A bash completion script: `_sbx` walks the words typed so far to the command they name,
    skipping option values, then completes an option, its value, a subcommand or an operand."""
    nodes = _walk(command)
    cases: dict[str, list[str]] = {"subcommands": [], "options": [], "valued": [], "operand": []}
    kinds = []
    for path, node in nodes:
        cases["subcommands"].append(f"        {_sh_word(path)}) echo {_sh_word(' '.join(s.name for s in node.subcommands))} ;;")
        flags = [flag for option in node.options for flag in option.flags]
        cases["options"].append(f"        {_sh_word(path)}) echo {_sh_word(' '.join(flags))} ;;")
        valued = [flag for option in node.options if option.metavar for flag in option.flags]
        cases["valued"].append(f"        {_sh_word(path)}) echo {_sh_word(' '.join(valued))} ;;")
        cases["operand"].append(f"        {_sh_word(path)}) echo {_sh_word(node.operand)} ;;")
        for option in node.options:
            if option.metavar and option.kind:
                for flag in option.flags:
                    kinds.append(f"        {_sh_word(f'{path} {flag}')}) echo {_sh_word(option.kind)} ;;")
    functions = "".join(f"_sbx_{name}() {{\n    case $1 in\n" + "\n".join(lines) + "\n    esac\n}\n\n"
                        for name, lines in cases.items())
    functions += "_sbx_value() {\n    case \"$1 $2\" in\n" + "\n".join(kinds) + "\n    esac\n}\n\n"
    return BASH_HEAD + functions + BASH_MAIN


BASH_HEAD = """\
# bash completion for sbx.  Generated by `sbx completion bash` from sbx's own option tables.
# Install:  sbx completion bash > ~/.local/share/bash-completion/completions/sbx
# (or source it from ~/.bashrc).

"""

BASH_MAIN = r"""_sbx_complete_kind() {
    # $1: what to complete (file, dir, command, profile, image, box, choice:WORDS); $2: the word so far.
    local sbx=${COMP_WORDS[0]}
    case $1 in
        file) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$2")) ;;
        dir) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$2")) ;;
        command) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -c -- "$2")) ;;
        profile) compopt -o filenames 2>/dev/null  # a name, or a path: a *.toml file or with a /
            COMPREPLY=($(compgen -W "$("$sbx" profile list 2>/dev/null | awk 'NR == 1 { next } !NF { exit } { print $1 }')" -- "$2")
                       $(compgen -f -X '!*.toml' -- "$2"))
            [[ $2 == */* ]] && COMPREPLY+=($(compgen -d -- "$2")) ;;
        image) COMPREPLY=($(compgen -W "$("$sbx" image ls -q 2>/dev/null)" -- "$2")) ;;
        box) COMPREPLY=($(compgen -W "$("$sbx" box ls 2>/dev/null | cut -f1)" -- "$2")) ;;
        choice:*) COMPREPLY=($(compgen -W "${1#choice:}" -- "$2")) ;;
    esac
}

_sbx() {
    local cur words cword path=sbx word opt= kind i operands=0 skip=0
    if declare -F _get_comp_words_by_ref >/dev/null; then
        _get_comp_words_by_ref -n =: -w words -i cword cur  # bash-completion's: words whole across = and :
    else
        words=("${COMP_WORDS[@]}") cword=$COMP_CWORD cur=${COMP_WORDS[COMP_CWORD]}
    fi
    COMPREPLY=()
    for ((i = 1; i < cword; i++)); do
        word=${words[i]}
        if ((skip)); then skip=0; [[ $word == = ]] && skip=1; continue; fi  # bash splits --opt=value at =
        if ((operands)) || [[ $word == -- ]]; then operands=$((operands + 1)); continue; fi
        if [[ $word == -* ]]; then
            [[ $word != *=* && " $(_sbx_valued "$path") " == *" $word "* ]] && skip=1 opt=$word
            continue
        fi
        if [[ " $(_sbx_subcommands "$path") " == *" $word "* ]]; then path="$path $word"; else operands=1; fi
    done
    if ((skip)); then
        [[ $cur == = ]] && cur=
        _sbx_complete_kind "$(_sbx_value "$path" "$opt")" "$cur"
    elif ((operands == 0)) && [[ $cur == -*=* ]]; then
        _sbx_complete_kind "$(_sbx_value "$path" "${cur%%=*}")" "${cur#*=}"
    elif ((operands)); then
        kind=$(_sbx_operand "$path")
        [[ $kind == command ]] && kind=file  # after the command to run, its own arguments: files
        _sbx_complete_kind "$kind" "$cur"
    elif [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(_sbx_options "$path")" -- "$cur"))
    elif [[ -n $(_sbx_subcommands "$path") ]]; then
        COMPREPLY=($(compgen -W "$(_sbx_subcommands "$path")" -- "$cur"))
    else
        _sbx_complete_kind "$(_sbx_operand "$path")" "$cur"
    fi
    # An image name's tag: readline replaces only what follows the last ':'.
    [[ $cur == *:* ]] && declare -F __ltrim_colon_completions >/dev/null && __ltrim_colon_completions "$cur"
    return 0
}

complete -F _sbx sbx
"""


# ------------------------------------------------------------------------------------- zsh


def _zsh_escape(text: str, special: str = "[]\\") -> str:
    """Text for a single-quoted _arguments spec: `special` backslash-escaped (brackets in a
    [help], colons too in a :message: or a _describe name)."""
    text = "".join("\\" + ch if ch in special else ch for ch in text)
    return text.replace("'", "'\\''")


def _zsh_action(kind: str) -> str:
    if kind.startswith(_CHOICE):
        return f"({kind[len(_CHOICE):]})"
    return {FILE: "_files", DIR: "_files -/", COMMAND: "_command_names -e", PROFILE: "_sbx_profiles",
            IMAGE: "_sbx_images", BOX: "_sbx_boxes"}.get(kind, " ")


def _zsh_specs(node: Command) -> list[str]:
    specs = []
    for option in node.options:
        help = _zsh_escape(option.help or option.flags[-1].lstrip("-"))
        value = f":{_zsh_escape(option.metavar, ':[]')}:{_zsh_action(option.kind)}" if option.metavar else ""
        for flag in option.flags:
            joined = ("=" if flag.startswith("--") else "+") if option.metavar else ""
            exclusive = "*" if option.repeatable else f"({' '.join(option.flags)})"
            specs.append(f"'{exclusive}{flag}{joined}[{help}]{value}'")
    return specs


def zsh(command: Command) -> str:
    """A zsh completion function (#compdef sbx): one _arguments function per command."""
    out = [ZSH_HEAD]
    for path, node in _walk(command):
        name = "_" + path.replace(" ", "_")
        specs = _zsh_specs(node)
        if node.subcommands:
            entries = " ".join(f"'{_zsh_escape(sub.name, ':')}:{_zsh_escape(sub.help, '')}'" for sub in node.subcommands)
            specs += ["'1:command:->command'", "'*::argument:->argument'"]
            # The sbx being completed, for _sbx_profiles and co. (the nested ones' $words are shifted).
            first = "    local _sbx_command=$words[1]\n" if path == "sbx" else ""
            body = (f"{first}    local curcontext=$curcontext state line ret=1\n"
                    f"    typeset -A opt_args\n"
                    f"    _arguments -C -s -S \\\n        " + " \\\n        ".join(specs) + " && ret=0\n"
                    f"    case $state in\n"
                    f"        command) local -a commands=({entries})\n"
                    f"            _describe -t commands command commands && ret=0 ;;\n"
                    f"        argument) curcontext=${{curcontext%:*:*}}:{path.replace(' ', '-')}-$words[1]:\n"
                    f"            (( $+functions[{name}_$words[1]] )) && {name}_$words[1] && ret=0 ;;\n"
                    f"    esac\n"
                    f"    return ret\n")
        else:
            if node.operand == COMMAND:  # the command to run, then its own arguments
                specs += ["'(-)1:command:_command_names -e'", "'*::argument:_normal'"]
            elif node.operand:
                specs.append(f"'*:{node.operand.partition(':')[0]}:{_zsh_action(node.operand)}'")
            body = "    _arguments -s -S \\\n        " + " \\\n        ".join(specs) + "\n"
        out.append(f"{name}() {{\n{body}}}\n\n")
    out.append('_sbx "$@"\n')
    return "".join(out)


ZSH_HEAD = """\
#compdef sbx
# zsh completion for sbx.  Generated by `sbx completion zsh` from sbx's own option tables.
# Install:  sbx completion zsh > ~/.zfunc/_sbx  with  fpath=(~/.zfunc $fpath)  before compinit
# in ~/.zshrc (or into any directory of $fpath, as _sbx).

_sbx_profiles() {
    local -a names=(${(f)"$(_call_program profiles $_sbx_command profile list 2>/dev/null | awk 'NR == 1 { next } !NF { exit } { print $1 }')"})
    _describe -t profiles profile names
    _files -g '*.toml'
}

_sbx_images() {
    local -a names=(${(f)"$(_call_program images $_sbx_command image ls -q 2>/dev/null)"})
    _describe -t images image names
}

_sbx_boxes() {
    local -a names=(${${(f)"$(_call_program boxes $_sbx_command box ls 2>/dev/null)"}%%$'\\t'*})
    _describe -t boxes box names
}

"""


def main(args: list[str], usage: str) -> int:
    """`sbx completion bash|zsh`: the script on stdout; `usage` is cli/main.py's USAGE."""
    from ..errors import UsageError

    if args in (["-h"], ["--help"]):
        sys.stdout.write(HELP)
        return 0
    if len(args) != 1 or args[0] not in SHELLS:
        raise UsageError(f"completion: name a shell: {' or '.join(SHELLS)} (see 'sbx completion --help')")
    command = tree(usage)
    sys.stdout.write(bash(command) if args[0] == "bash" else zsh(command))
    return 0


HELP = """usage: sbx completion bash|zsh

Prints a completion script for the shell.  Install it with

  sbx completion bash > ~/.local/share/bash-completion/completions/sbx
  sbx completion zsh > ~/.zfunc/_sbx    (and fpath=(~/.zfunc $fpath) before compinit in ~/.zshrc)
"""
