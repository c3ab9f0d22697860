"""`sbx completion bash|zsh`: scripts generated from the parsers' own tables (cli/completion.py).

The tree is checked against the tables (every flag of the schema, every command of the usage,
every image command), then each script is run in its real shell: bash with COMP_WORDS set and
`_sbx` called, zsh on a pty with Tab pressed (compadd replaced by one that prints what it is
given, the technique of zsh-capture-completion).  The names completed at run time (profiles,
images) come from the sbx under test, through a launcher named in the command line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from sandbox.cli import completion, image
from sandbox.cli.main import USAGE
from sandbox.config import schema

from conftest import INSTALLED, REPO, busybox_image, sbx, sbx_environ


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An `sbx` command for the shells to call: the installed launcher, or one for the checkout."""
    if INSTALLED:
        return Path(sysconfig.get_paths()["scripts"]) / "sbx"
    path = tmp_path_factory.mktemp("bin") / "sbx"
    path.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m sandbox \"$@\"\n")
    path.chmod(0o755)
    return path


# ------------------------------------------------------------------------------ the tree


def test_run_options_are_the_schemas_flags() -> None:
    run = {c.name: c for c in completion.tree(USAGE).subcommands}["run"]
    flags = [flag for option in run.options for flag in option.flags]
    expected = [flag for setting in schema.SETTINGS for flag in setting.flags] + ["-h", "--help"]
    assert flags == expected
    valued = {flag for option in run.options if option.metavar for flag in option.flags}
    assert valued == {flag for s in schema.SETTINGS if s.flags and s.read != "switch" for flag in s.flags}


def test_commands_are_the_usages() -> None:
    names = [c.name for c in completion.tree(USAGE).subcommands]
    listed = [line.split()[0] for line in USAGE.split("commands:\n")[1].split("\n\n")[0].splitlines()]
    assert names == listed
    assert {"run", "image", "box", "profile", "batch", "doctor", "completion", "man"} <= set(names)


@pytest.mark.parametrize("name", [command.name for command in completion.tree(USAGE).subcommands])
def test_every_listed_command_dispatches(name: str) -> None:
    """A command the completion offers is one main() knows: its --help is not 'unknown command'."""
    done = sbx(name, "--help")
    assert "unknown command" not in done.stderr, done.stderr


def test_image_commands_are_its_parsers() -> None:
    node = {c.name: c for c in completion.tree(USAGE).subcommands}["image"]
    assert [c.name for c in node.subcommands] == list(image.COMMANDS)
    for command in node.subcommands:
        valued, switches = image.COMMANDS[command.name]
        assert [o.flags[0] for o in command.options] == [*valued, *switches], command.name
        assert all(o.metavar for o in command.options if o.flags[0] in valued)


@pytest.mark.parametrize("key", sorted(completion.CHOICES))
def test_choices_are_what_the_check_accepts(key: str) -> None:
    check = schema.BY_KEY[key].check
    assert check is not None
    for word in completion.CHOICES[key]:
        assert check(word) == word
    with pytest.raises(schema.Bad):
        check("no-such-choice")


# ------------------------------------------------------------------------------------ bash


BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")


def quoted(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def bash_complete(launcher: Path, *words: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                  with_bash_completion: bool = False) -> list[str]:
    """What `_sbx` offers for the command line WORDS (the last one being completed).  With
    bash-completion loaded, the words are split as readline splits them (at = and :) and the
    line given whole, as bash does; without it, as given."""
    script = completion.bash(completion.tree(USAGE))
    line = [str(launcher), *words]
    if with_bash_completion:
        split = [part for word in line for part in re.split(r"([=:])", word) if part] + ([""] if not words[-1] else [])
        script = f"source {BASH_COMPLETION}\n{script}\nCOMP_LINE={quoted(' '.join(line))}; COMP_POINT=${{#COMP_LINE}}\n"
        line = split
    array = " ".join(quoted(word) for word in line)
    code = f'{script}\nCOMP_WORDS=({array}); COMP_CWORD={len(line) - 1}; _sbx; printf "%s\\n" "${{COMPREPLY[@]}}"\n'
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=sbx_environ(env))
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


TOP = {command.name for command in completion.tree(USAGE).subcommands}  # test_commands_are_the_usages
CASES = [
    (("",), TOP),
    (("ru",), {"run"}),
    (("run", "--net"), {"--network", "--net"}),
    (("run", "--network", ""), {"none", "host", "pasta", "nat"}),
    (("run", "--network=pa"), {"pasta"}),
    (("run", "--network", "=", "pa"), {"pasta"}),  # as bash splits it without bash-completion
    (("run", "--network", "=", ""), {"none", "host", "pasta", "nat"}),
    (("run", "--network", "=", "host", "--seccomp", "n"), {"none"}),
    (("run", "-m", "1G", "--seccomp", "s"), {"strict"}),
    (("run", "--memory", "1G", "--pids"), {"--pids-limit"}),
    (("image", ""), set(image.COMMANDS)),
    (("image", "--root", "/tmp", "pr"), {"prune"}),
    (("image", "build", "--network", ""), {"none", "pasta"}),
    (("image", "ls", "-"), {"-q", "--quiet"}),
    (("box", "run", "--mode", ""), {"rw", "ro", "overlay"}),
    (("completion", ""), {"bash", "zsh"}),
    (("profile", "s"), {"show"}),
    (("batch", "--j"), {"--jobs"}),
]


@pytest.mark.parametrize(("words", "expected"), CASES, ids=[" ".join(w) for w, _ in CASES])
def test_bash(launcher: Path, words: tuple[str, ...], expected: set[str]) -> None:
    assert set(bash_complete(launcher, *words)) == expected


BC_CASES = [
    (("",), TOP),
    (("run", "--network=pa"), {"pasta"}),
    (("run", "--network="), {"none", "host", "pasta", "nat"}),
    (("run", "--network=host", "--seccomp", "n"), {"none"}),
    (("run", "--seccomp=strict", "--net"), {"--network", "--net"}),
    (("image", "build", "--network", ""), {"none", "pasta"}),
]


@pytest.mark.skipif(not BASH_COMPLETION.exists(), reason="bash-completion is not installed (the test command installs it)")
@pytest.mark.parametrize(("words", "expected"), BC_CASES, ids=[" ".join(w) for w, _ in BC_CASES])
def test_bash_with_bash_completion(launcher: Path, words: tuple[str, ...], expected: set[str]) -> None:
    """Through bash-completion's word splitting, which keeps --network=pa one word."""
    assert set(bash_complete(launcher, *words, with_bash_completion=True)) == expected


def test_bash_profiles_and_files(launcher: Path, tmp_path: Path) -> None:
    """Names from `sbx profile list` (the shipped profiles), *.toml files; after the command to
    run, its arguments are files."""
    (tmp_path / "judge.toml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    assert "grader" in bash_complete(launcher, "run", "--profile", "", cwd=tmp_path)
    assert bash_complete(launcher, "run", "--profile", "gr", cwd=tmp_path) == ["grader"]
    assert bash_complete(launcher, "run", "--profile", "j", cwd=tmp_path) == ["judge.toml"]
    assert bash_complete(launcher, "profile", "check", "n", cwd=tmp_path) == ["notes.txt"]
    assert bash_complete(launcher, "run", "--profile", "grader", "--", "true", "no", cwd=tmp_path) == ["notes.txt"]
    assert "true" in bash_complete(launcher, "run", "--network", "none", "tru", cwd=tmp_path)


def test_bash_images(launcher: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    env = {**os.environ, "SBX_ROOT": str(root)}
    sbx("image", "import", "--name", "tiny", str(busybox_image(tmp_path / "oci")), env=env, check=True)
    assert bash_complete(launcher, "run", "--image", "t", env=env) == ["tiny:latest"]
    assert bash_complete(launcher, "image", "rm", "", env=env) == ["tiny:latest"]
    if BASH_COMPLETION.exists():  # readline replaces only what follows the ':'
        assert bash_complete(launcher, "run", "--image", "tiny:l", env=env, with_bash_completion=True) == ["latest"]


# ------------------------------------------------------------------------------------- zsh

ZSH_SETUP = r"""
fpath=($COMPLETION_DIR $fpath)
PROMPT=''
autoload -U compinit; compinit -u -D
bindkey '^M' undefined; bindkey '^J' undefined; bindkey '^I' complete-word
null-line() { echo -E - $'\0' }
compprefuncs=(null-line); comppostfuncs=(null-line exit)
zstyle ':completion:*' list-grouped false
zstyle ':completion:*' insert-tab false
compadd() {
  if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi
  typeset -a __hits __dscr __tmp
  if (( $@[(I)-d] )); then
    __tmp=${@[$[${@[(i)-d]}+1]]}
    if [[ $__tmp == \(* ]]; then eval "__dscr=$__tmp"; else __dscr=( "${(@P)__tmp}" ); fi
  fi
  builtin compadd -A __hits -D __dscr "$@"
  setopt localoptions norcexpandparam extendedglob
  typeset -A apre hpre hsuf asuf
  zparseopts -E P:=apre p:=hpre S:=asuf s:=hsuf
  [[ -n $__hits ]] || return
  for i in {1..$#__hits}; do echo -E - "MATCH:$IPREFIX$apre$hpre$__hits[$i]$hsuf$asuf"; done
}
echo READY
"""

# zsh -f capture.zsh SETUP LINE: the matches zsh offers for LINE then Tab, one a line.
ZSH_CAPTURE = r"""
zmodload zsh/zpty || exit 3
zpty z zsh -f -i
local line
zpty -w z "source ${(q)1}"
while zpty -r z line; do [[ $line == READY* ]] && break; done
zpty -w -n z "$2"$'\t'
integer seen=0
while zpty -r z line; do
  if [[ $line == *$'\0'* ]]; then (( seen++ )) && break || continue; fi
  [[ $line == *MATCH:* ]] && print -r -- "${${line#*MATCH:}%%$'\r'*}"
done
zpty -d z
"""

needs_zsh = pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (the test command installs it)")


@pytest.fixture(scope="module")
def zsh_dir(tmp_path_factory: pytest.TempPathFactory, launcher: Path) -> Path:
    root = tmp_path_factory.mktemp("zsh")
    (root / "functions").mkdir()
    (root / "functions" / "_sbx").write_text(completion.zsh(completion.tree(USAGE)))
    (root / "setup.zsh").write_text(ZSH_SETUP)
    (root / "capture.zsh").write_text(ZSH_CAPTURE)
    (root / "bin").mkdir()
    (root / "bin" / "sbx").symlink_to(launcher)
    return root


def zsh_complete(zsh_dir: Path, line: str, cwd: Path | None = None) -> list[str]:
    env = {**sbx_environ(), "COMPLETION_DIR": str(zsh_dir / "functions"),
           "PATH": f"{zsh_dir / 'bin'}:{os.environ['PATH']}", "HOME": str(zsh_dir)}
    done = subprocess.run(["zsh", "-f", str(zsh_dir / "capture.zsh"), str(zsh_dir / "setup.zsh"), line],
                          capture_output=True, text=True, timeout=60, cwd=cwd or zsh_dir, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


ZSH_CASES = [
    ("sbx ", TOP),
    ("sbx run --netw", {"--network"}),
    ("sbx run --network ", {"none", "host", "pasta", "nat"}),
    ("sbx run -m 1G --seccomp s", {"strict"}),
    ("sbx run --profile gr", {"grader"}),
    ("sbx image ", set(image.COMMANDS)),
    ("sbx image build --network ", {"none", "pasta"}),
    ("sbx box run --mode ", {"rw", "ro", "overlay"}),
    ("sbx completion ", {"bash", "zsh"}),
    ("sbx profile show gr", {"grader"}),
]


@needs_zsh
@pytest.mark.parametrize(("line", "expected"), ZSH_CASES, ids=[line for line, _ in ZSH_CASES])
def test_zsh(zsh_dir: Path, line: str, expected: set[str]) -> None:
    assert set(zsh_complete(zsh_dir, line)) == expected


@needs_zsh
def test_zsh_runs_a_command_then_its_arguments(zsh_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("")
    assert "true" in zsh_complete(zsh_dir, "sbx run --network none tru", cwd=tmp_path)
    assert "notes.txt" in zsh_complete(zsh_dir, "sbx run -- cat no", cwd=tmp_path)


# ---------------------------------------------------------------------------- the command


@pytest.mark.parametrize("shell", completion.SHELLS)
def test_command_prints_the_script(shell: str) -> None:
    done = sbx("completion", shell)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == (completion.bash if shell == "bash" else completion.zsh)(completion.tree(USAGE))
    syntax = subprocess.run([shell, "-n"], input=done.stdout, capture_output=True, text=True, timeout=30) \
        if shutil.which(shell) else None
    assert syntax is None or syntax.returncode == 0, syntax.stderr


@pytest.mark.parametrize("args", [(), ("fish",), ("bash", "zsh")])
def test_bad_shell(args: tuple[str, ...]) -> None:
    done = sbx("completion", *args)
    assert (done.returncode, done.stdout) == (125, "")
    assert done.stderr.startswith("sbx: error: completion: name a shell: bash or zsh") and done.stderr.count("\n") == 1
