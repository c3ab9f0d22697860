"""Who supplies a profile: a submission's ./.sbx/profiles/ never sets the limits of the judge that runs it.

Each attack is a real `sbx run` (or API, batch, `sbx profile`) in a submission directory that
carries .sbx/profiles/, as a judge runs sbx in the directory it staged the submission in.  Each
has a control showing that the submission's file does what it claims once it is used: named by
path, after --project-profiles, or after `sbx profile trust`.  The limits are read back from
inside the sandbox (/proc/self/limits, hostname, the environment), not from sbx's own data.

Files that someone other than the caller or root could change are refused: those are made with
real owners, as root by chown and rootless through the caller's subordinate ids (unshare --map-auto).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import SHIPPED_PROFILES, sbx
from sandbox import Runner
from sandbox.config import profile
from sandbox.config.profile import DEFAULT, ProfileError, resolve

# The submission's grader.toml: limits of its own choosing.  The shipped grader: 256 files, 2 s CPU.
HUGE = 'description = "the submission\'s"\n[limits]\nopen_files = 4096\ntime = "unlimited"\n'
LIMITS = ["cat", "/proc/self/limits"]


class Judge:
    """A judge's world: its own profile outside the submission, a home, an XDG dir, and the
    submission directory it runs sbx in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sub = root / "submission"
        self.home = root / "home"
        self.xdg = root / "xdg"
        self.judge = root / "judge" / "judge.toml"
        for d in (self.sub, self.home, self.xdg):
            d.mkdir()
        self.write(self.judge, 'description = "the judge\'s"\nextends = "grader"\n')
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.xdg),
        }

    @property
    def project(self) -> Path:
        return self.sub / ".sbx" / "profiles"

    def write(self, path: Path, text: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def sbx(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return sbx(*args, cwd=self.sub, env=dict(self.env), input=stdin)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`sbx run ARGS` in the submission directory."""
        return self.sbx("run", *args)

    def limits(self, *options: str) -> dict[str, str]:
        """/proc/self/limits inside `sbx run OPTIONS`: "Max open files" -> its soft limit."""
        result = self.run(*options, "--", *LIMITS)
        assert result.returncode == 0, result.stderr
        rows = {}
        for line in result.stdout.splitlines()[1:]:
            name, soft = line[:26].strip(), line[26:].split()[0]
            rows[name] = soft
        return rows


@pytest.fixture
def judge(tmp_path: Path) -> Judge:
    return Judge(tmp_path)


def warnings(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if "ignored the project's" in line]


# ------------------------------------------------------------ the submission supplies the base


def test_a_judge_profile_by_path_extends_the_shipped_grader_not_the_submissions(judge: Judge) -> None:
    judge.write(judge.project / "grader.toml", HUGE)
    for opted in ([], ["--project-profiles"]):  # what a trusted file extends never comes from ./.sbx/
        got = judge.limits("--profile", str(judge.judge), *opted)
        assert (got["Max open files"], got["Max cpu time"]) == ("256", "2"), opted
    # Control: the submission's file does raise the limits once it is the one used.
    got = judge.limits("--profile", "./.sbx/profiles/grader.toml")
    assert (got["Max open files"], got["Max cpu time"]) == ("4096", "unlimited")
    got = judge.limits("--project-profiles", "--profile", "grader")
    assert got["Max open files"] == "4096"


def test_profile_grader_by_name_is_the_shipped_one_with_a_warning(judge: Judge) -> None:
    judge.write(judge.project / "grader.toml", HUGE)
    result = judge.run("--profile", "grader", "--", *LIMITS)
    assert result.returncode == 0 and "Max open files            256 " in result.stdout
    [line] = warnings(result)
    assert line == (
        f"sbx: warning: ignored the project's .sbx/profiles/grader.toml, used {SHIPPED_PROFILES}/grader.toml: "
        "pass --project-profiles or run 'sbx profile trust' to use the project's"
    )
    # Control: opted in, the project's applies, and nothing is said.
    result = judge.run("--project-profiles", "--profile", "grader", "--", *LIMITS)
    assert result.returncode == 0 and "Max open files            4096 " in result.stdout
    assert warnings(result) == []


@pytest.mark.parametrize("options", [[], ["--profile", "default"]])
def test_the_implicit_default_is_never_the_submissions(judge: Judge, options: list[str]) -> None:
    judge.write(
        judge.project / "default.toml",
        '[sandbox]\nhostname = "pwned"\nenv = { PWNED = "1" }\n[limits]\nopen_files = 4096\n',
    )
    script = 'hostname; echo "${PWNED-unset}"; grep "open files" /proc/self/limits'
    result = judge.run(*options, "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["sbx", "unset"] and "4096" not in result.stdout
    [line] = warnings(result)
    assert "ignored the project's .sbx/profiles/default.toml, used the built-in default" in line
    # Control: opted in, the project's default applies.
    result = judge.run("--project-profiles", *options, "--", "sh", "-c", script)
    assert result.stdout.splitlines()[:2] == ["pwned", "1"] and "4096" in result.stdout, result.stderr


def test_a_name_only_in_the_project_is_an_error_that_says_how_to_opt_in(judge: Judge) -> None:
    judge.write(judge.project / "mine.toml", "[limits]\nopen_files = 100\n")
    result = judge.run("--profile", "mine", "--", "touch", "ran")
    assert result.returncode == 125 and result.stdout == ""
    assert result.stderr == (
        "sbx: error: profile 'mine' is only in ./.sbx/profiles/, the project's profiles, which apply only "
        "when you opt in (see SECURITY.md, 'Profiles'): pass --project-profiles or run 'sbx profile trust', "
        "or name the file: --profile ./.sbx/profiles/mine.toml\n"
    )
    assert not (judge.sub / "ran").exists()
    # Control: with the flag it is found and used.
    assert judge.limits("--project-profiles", "--profile", "mine")["Max open files"] == "100"


def test_a_trusted_file_never_extends_a_project_name(judge: Judge) -> None:
    judge.write(judge.project / "base.toml", HUGE)
    judge.write(judge.judge, 'extends = "base"\n')
    for opted in ([], ["--project-profiles"]):
        result = judge.run("--profile", str(judge.judge), *opted, "--", "touch", "ran")
        assert result.returncode == 125, opted
        assert result.stderr.startswith(f"sbx: error: {judge.judge}: 'extends': profile 'base' not found")
        assert result.stderr.endswith("; ./.sbx/profiles/ is never searched for what a profile outside it extends\n")
    assert not (judge.sub / "ran").exists()


def test_the_project_rule_still_applies_once_opted_in(judge: Judge) -> None:
    attack = '[network]\nmode = "host"\n'
    judge.write(judge.project / "grader.toml", attack)
    host = sorted(line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:])
    assert host != ["lo"]  # the host has interfaces a sandbox could reach
    net = ["sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort"]
    # Not opted in: the shipped grader, loopback only.
    result = judge.run("--profile", "grader", "--", *net)
    assert (result.returncode, result.stdout) == (0, "lo\n"), result.stderr
    # Opted in, or named by path: the project rule refuses it.
    for options in (["--project-profiles", "--profile", "grader"], ["--profile", ".sbx/profiles/grader.toml"]):
        result = judge.run(*options, "--", *net)
        assert result.returncode == 125 and result.stdout == ""
        assert "'network.mode' cannot be \"host\" in a profile from ./.sbx/" in result.stderr
    # Control: the same file as the caller's own profile does reach the host's network.
    judge.write(judge.xdg / "sbx" / "profiles" / "grader.toml", attack)
    result = judge.run("--profile", "grader", "--", *net)
    assert (result.returncode, sorted(result.stdout.split())) == (0, host), result.stderr


def test_api_and_batch_opt_in_through_options(judge: Judge) -> None:
    judge.write(judge.project / "grader.toml", HUGE)
    said: list[str] = []
    with Runner("grader", cwd=str(judge.sub), environ=judge.env, warm=False, warn=said.append) as runner:
        plain = runner.run(LIMITS)
        opted = runner.run(LIMITS, options=["--project-profiles"])
    assert b"Max open files            256 " in (plain.stdout or b"")
    assert b"Max open files            4096 " in (opted.stdout or b"")
    assert [line for line in said if "ignored the project's" in line] == [
        f"ignored the project's .sbx/profiles/grader.toml, used {SHIPPED_PROFILES}/grader.toml: "
        "pass --project-profiles or run 'sbx profile trust' to use the project's"
    ]
    with Runner("grader", options=["--project-profiles"], cwd=str(judge.sub), environ=judge.env,
                warm=False) as runner:
        assert b"Max open files            4096 " in (runner.run(LIMITS).stdout or b"")
    lines = [
        {"id": "plain", "argv": LIMITS, "profile": "grader"},
        {"id": "opted", "argv": LIMITS, "profile": "grader", "options": ["--project-profiles"]},
    ]
    result = judge.sbx("batch", "--cold", stdin="".join(json.dumps(line) + "\n" for line in lines))
    assert result.returncode == 0, result.stderr
    out = {line["id"]: line["stdout"] for line in map(json.loads, result.stdout.splitlines())}
    assert "Max open files            256 " in out["plain"]
    assert "Max open files            4096 " in out["opted"]


def test_profile_show_and_list_take_the_same_opt_in(judge: Judge) -> None:
    judge.write(judge.project / "grader.toml", HUGE)
    shown = judge.sbx("profile", "show", "grader")
    assert shown.returncode == 0 and "open_files = 256\n" in shown.stdout
    assert len(warnings(shown)) == 1
    shown = judge.sbx("profile", "show", "--project-profiles", "grader")
    assert shown.returncode == 0 and "open_files = 4096\n" in shown.stdout and warnings(shown) == []

    project_file = judge.project / "grader.toml"
    listed = judge.sbx("profile", "list").stdout
    [row] = [line for line in listed.splitlines() if str(project_file) in line]
    assert row.endswith(" (the project's: not used without --project-profiles or 'sbx profile trust')")
    assert "shadowed" not in listed
    assert listed.splitlines()[-1] == (
        f"searched, first match wins: {judge.xdg}/sbx/profiles, {profile.SYSTEM_DIR}, {SHIPPED_PROFILES}"
    )
    listed = judge.sbx("profile", "list", "--project-profiles").stdout
    assert f"(shadowed by {project_file})" in listed and "the submission's" in listed
    assert listed.splitlines()[-1].startswith(f"searched, first match wins: {judge.project}, ")


# ------------------------------------------------------------------------ file ownership


def give_away(path: Path, owner: bool, group: bool) -> None:
    """Make `path` another user's (`owner`), or its group one that others are in (`group`):
    as root with chown, rootless through the caller's subordinate ids."""
    if os.getuid() == 0:
        other = pwd.getpwnam("sbxtest")
        os.chown(path, other.pw_uid if owner else -1, other.pw_gid if group else -1)
    else:
        ids = f"{1 if owner else 0}:{5 if group else 0}"  # inside: subordinate ids, owned by nobody we know
        subprocess.run(["unshare", "--map-auto", "--map-root-user", "chown", ids, str(path)], check=True)


def give_back(path: Path) -> None:
    """Undo give_away, so the test's directory can be removed."""
    if os.getuid() == 0:
        os.chown(path, 0, 0)
    else:
        subprocess.run(["unshare", "--map-auto", "--map-root-user", "chown", "0:0", str(path)], check=True)


def refused(judge: Judge, options: list[str], why: str) -> None:
    result = judge.run(*options, "--", "touch", "ran")
    assert result.returncode == 125 and result.stdout == "", result.stderr
    assert result.stderr.count("\n") == 1 and why in result.stderr, result.stderr
    assert result.stderr.startswith("sbx: error: profile /") and "refused: " in result.stderr
    assert not (judge.sub / "ran").exists()


def accepted(judge: Judge, options: list[str]) -> None:
    result = judge.run(*options, "--", "echo", "ran")
    assert (result.returncode, result.stdout) == (0, "ran\n"), result.stderr


def test_a_profile_writable_by_others_is_refused(judge: Judge) -> None:
    judge.judge.chmod(0o646)
    refused(judge, ["--profile", str(judge.judge)],
            f"profile {judge.judge}: refused: it is writable by others (mode 0646); chmod o-w {judge.judge}")
    judge.judge.chmod(0o644)  # control
    accepted(judge, ["--profile", str(judge.judge)])


def test_a_profile_writable_by_a_shared_group_is_refused(judge: Judge) -> None:
    judge.judge.chmod(0o664)
    give_away(judge.judge, owner=False, group=True)
    refused(judge, ["--profile", str(judge.judge)], "refused: it is writable by group ")


def test_a_profile_writable_by_the_owners_private_group_is_accepted(judge: Judge) -> None:
    # Debian and Ubuntu give each user a group of their own, and umask 002 with it.
    me = pwd.getpwuid(os.getuid())
    mine = grp.getgrgid(me.pw_gid)
    others = [p.pw_name for p in pwd.getpwall() if p.pw_gid == me.pw_gid and p.pw_uid != me.pw_uid]
    assert not others and set(mine.gr_mem) <= {me.pw_name}, "this host gives the caller no private group"
    judge.judge.chmod(0o664)
    os.chown(judge.judge, -1, me.pw_gid)
    accepted(judge, ["--profile", str(judge.judge)])


def test_a_profile_owned_by_another_user_is_refused(judge: Judge) -> None:
    give_away(judge.judge, owner=True, group=False)
    refused(judge, ["--profile", str(judge.judge)], "refused: it is owned by uid ")
    assert ", not by you or root: they could change it" in judge.run("--profile", str(judge.judge), "--", "true").stderr


def test_a_profile_in_a_directory_others_can_write_is_refused(judge: Judge) -> None:
    folder = judge.judge.parent
    folder.chmod(0o777)
    refused(judge, ["--profile", str(judge.judge)],
            f"refused: its directory {folder} is writable by others (mode 0777); chmod o-w {folder}")
    folder.chmod(0o1777)  # control: sticky, as /tmp: nobody else can replace the judge's file
    accepted(judge, ["--profile", str(judge.judge)])
    folder.chmod(0o755)
    give_away(folder, owner=True, group=False)
    try:
        refused(judge, ["--profile", str(judge.judge)], f"refused: its directory {folder} is owned by uid ")
    finally:
        give_back(folder)


def test_a_symlink_into_a_directory_others_can_write_is_refused(judge: Judge) -> None:
    shared = judge.root / "shared"
    shared.mkdir()
    judge.write(shared / "base.toml", "[limits]\nopen_files = 100\n")
    link = judge.root / "judge" / "linked.toml"
    link.symlink_to(shared / "base.toml")
    assert judge.limits("--profile", str(link))["Max open files"] == "100"  # control
    shared.chmod(0o777)
    refused(judge, ["--profile", str(link)], f"the directory it links into, {shared}, is writable by others")


def test_the_check_covers_the_trusted_directories_and_what_is_extended(judge: Judge) -> None:
    mine = judge.write(judge.xdg / "sbx" / "profiles" / "grader.toml", 'extends = "grader"\n')
    accepted(judge, ["--profile", "grader"])  # control
    mine.chmod(0o666)
    refused(judge, ["--profile", "grader"], f"profile {mine}: refused: it is writable by others")
    mine.chmod(0o644)
    judge.write(judge.judge, 'extends = "mine"\n')
    (judge.xdg / "sbx" / "profiles" / "mine.toml").write_text("")
    accepted(judge, ["--profile", str(judge.judge)])
    give_away(judge.xdg / "sbx" / "profiles" / "mine.toml", owner=True, group=False)
    refused(judge, ["--profile", str(judge.judge)], "/xdg/sbx/profiles/mine.toml: refused: it is owned by uid ")


def test_a_project_default_is_checked_too_once_opted_in(judge: Judge) -> None:
    default = judge.write(judge.project / "default.toml", "[limits]\nopen_files = 100\n")
    default.chmod(0o646)
    refused(judge, ["--project-profiles"], f"profile {default}: refused: it is writable by others")
    accepted(judge, [])  # not opted in: the built-in default, the file is not read


# ---------------------------------------------------------------------------- trust list


def test_trust_lets_names_resolve_in_the_project_until_a_file_changes(judge: Judge) -> None:
    grader = judge.write(judge.project / "grader.toml", HUGE)
    assert judge.limits("--profile", "grader")["Max open files"] == "256"
    trusted = judge.sbx("profile", "trust")
    real = os.path.realpath(judge.sub)
    assert (trusted.returncode, trusted.stdout) == (
        0, f"trusted {real}/.sbx/profiles/ (grader): its names apply there until a file in it changes\n"
    )
    listed = judge.xdg / "sbx" / "trusted"
    assert oct(listed.stat().st_mode & 0o777) == "0o600" and os.listdir(listed.parent) == ["trusted"]
    result = judge.run("--profile", "grader", "--", *LIMITS)
    assert "Max open files            4096 " in result.stdout and warnings(result) == []

    grader.write_text(HUGE + "# changed\n")  # any change ends the trust
    result = judge.run("--profile", "grader", "--", *LIMITS)
    assert "Max open files            256 " in result.stdout and len(warnings(result)) == 1
    judge.sbx("profile", "trust")
    assert judge.limits("--profile", "grader")["Max open files"] == "4096"
    judge.write(judge.project / "new.toml", "")  # so does a new file
    assert judge.limits("--profile", "grader")["Max open files"] == "256"
    judge.sbx("profile", "trust")
    assert judge.limits("--profile", "grader")["Max open files"] == "4096"

    untrusted = judge.sbx("profile", "untrust")
    assert (untrusted.returncode, untrusted.stdout) == (0, f"untrusted {real}\n")
    assert judge.limits("--profile", "grader")["Max open files"] == "256"
    assert judge.sbx("profile", "untrust").stdout == f"{real} was not trusted\n"


def test_trust_is_for_that_directory_only(judge: Judge) -> None:
    judge.write(judge.project / "grader.toml", HUGE)
    assert judge.sbx("profile", "trust", str(judge.sub)).returncode == 0
    copy = judge.root / "other"
    subprocess.run(["cp", "-a", str(judge.sub), str(copy)], check=True)  # the same files, elsewhere
    result = sbx("run", "--profile", "grader", "--", *LIMITS, cwd=copy, env=dict(judge.env))
    assert "Max open files            256 " in result.stdout and "ignored the project's" in result.stderr


def test_trust_keeps_the_project_rule(judge: Judge) -> None:
    judge.write(judge.project / "grader.toml", '[network]\nmode = "host"\n')
    assert judge.sbx("profile", "trust").returncode == 0
    result = judge.run("--profile", "grader", "--", "true")
    assert result.returncode == 125 and "cannot be \"host\" in a profile from ./.sbx/" in result.stderr


def test_a_trust_list_others_can_write_is_refused(judge: Judge) -> None:
    judge.write(judge.project / "grader.toml", HUGE)
    assert judge.sbx("profile", "trust").returncode == 0
    listed = judge.xdg / "sbx" / "trusted"
    listed.chmod(0o666)
    result = judge.run("--profile", "grader", "--", "touch", "ran")
    assert result.returncode == 125 and not (judge.sub / "ran").exists()
    assert result.stderr == f"sbx: error: trust list {listed}: refused: it is writable by others (mode 0666); " \
                            f"chmod o-w {listed}\n"
    # A forged list, even if it could be written, names a digest of other contents: not trusted.
    listed.chmod(0o600)
    listed.write_text(f"{'0' * 64} {os.path.realpath(judge.sub)}\n")
    assert judge.limits("--profile", "grader")["Max open files"] == "256"


def test_trust_needs_a_project(judge: Judge) -> None:
    result = judge.sbx("profile", "trust", str(judge.home))
    assert result.returncode == 125
    assert result.stderr == f"sbx: error: {judge.home} has no .sbx/profiles/ directory: nothing to trust\n"


# ------------------------------------------------------------------------------ start-up


def test_a_project_without_a_default_costs_a_plain_run_nothing(judge: Judge) -> None:
    judge.write(judge.project / "grader.toml", HUGE)
    code = textwrap.dedent(
        f"""
        import sys
        from sandbox.config.profile import resolve, DEFAULT
        assert resolve(None, cwd={str(judge.sub)!r}, environ={judge.env!r}) is DEFAULT
        assert not [name for name in ("tomllib", "tomli", "sandbox.config.profile_file") if name in sys.modules]
        """
    )
    assert not os.path.lexists("/etc/sbx/profiles/default.toml")
    subprocess.run([sys.executable, "-c", code], check=True, env={**judge.env, "PYTHONPATH": str(Path(__file__).parent.parent)})


def test_resolve_without_opting_in_gives_the_trusted_profiles(judge: Judge) -> None:
    judge.write(judge.project / "default.toml", "[limits]\nopen_files = 100\n")
    judge.write(judge.project / "grader.toml", HUGE)
    said: list[str] = []
    got = resolve(None, cwd=str(judge.sub), environ=judge.env, warn=said.append)
    assert got.settings == DEFAULT.settings and len(said) == 1
    assert resolve("grader", cwd=str(judge.sub), environ=judge.env).get("limits.open_files") == 256
    assert resolve("grader", cwd=str(judge.sub), environ=judge.env, project=True).get("limits.open_files") == 4096
    judge.write(judge.project / "mine.toml", "")
    with pytest.raises(ProfileError, match=r"^profile 'mine' is only in \./\.sbx/profiles/"):
        resolve("mine", cwd=str(judge.sub), environ=judge.env)


def test_a_project_profile_named_by_path_extends_project_names_under_the_rule(judge: Judge) -> None:
    judge.write(judge.project / "base.toml", '[limits]\nopen_files = 100\n[[mount]]\nsource = "/etc"\ntarget = "/x"\n')
    judge.write(judge.project / "top.toml", 'extends = "base"\n')
    message = judge.run("--profile", "./.sbx/profiles/top.toml", "--", "true").stderr
    assert message.startswith("sbx: error: .sbx/profiles/base.toml: 'mount[1].source' /etc is outside the project")
    judge.write(judge.project / "base.toml", "[limits]\nopen_files = 100\n")
    assert judge.limits("--profile", "./.sbx/profiles/top.toml")["Max open files"] == "100"


def test_profile_check_accepts_the_flag(judge: Judge) -> None:
    judge.write(judge.sub / "mine.toml", 'extends = "grader"\n')
    for options in ([], ["--project-profiles"]):
        result = judge.sbx("profile", "check", *options, "mine.toml")
        assert (result.returncode, result.stdout) == (0, "mine.toml: ok (profile 'mine')\n")
