"""Profiles: resolution, validation, inheritance, the ./.sbx/ rule, writing back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from sandbox.config import dump, profile_file, search
from sandbox.config.profile import DEFAULT, Profile, ProfileError, resolve, search_path
from sandbox.model.spec import Mount

from conftest import SHIPPED_PROFILES

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ("default", "grader", "ci", "interactive", "build")

# The contract with the CLI: each key's value type.
TYPES: dict[str, type] = {
    "sandbox.image": str,
    "sandbox.hostname": str,
    "sandbox.uid": int,
    "sandbox.gid": int,
    "sandbox.workdir": str,
    "sandbox.env": tuple,
    "sandbox.pass_env": tuple,
    "sandbox.disk": int,
    "sandbox.tmp_size": int,
    "limits.memory": int,
    "limits.cpus": float,
    "limits.cpuset": str,
    "limits.pids": int,
    "limits.time": float,
    "limits.wall_time": float,
    "limits.output": int,
    "limits.file_size": int,
    "limits.open_files": int,
    "limits.stack": int,
    "limits.io_read_bps": int,
    "limits.io_write_bps": int,
    "limits.strict": bool,
    "network.mode": str,
    "network.publish": tuple,
    "seccomp.policy": str,
    "seccomp.allow": tuple,
    "seccomp.deny": tuple,
    "seccomp.action": str,
    "landlock.enabled": bool,
    "landlock.write": str,
    "landlock.noexec": tuple,
    "landlock.tcp_bind": tuple,
    "landlock.tcp_connect": tuple,
    "mounts": tuple,
}


class Env:
    """A project directory, a home, XDG and system dirs, all under tmp_path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cwd = root / "project"
        self.home = root / "home"
        self.xdg = root / "xdg"
        self.system = root / "etc"
        for d in (self.cwd, self.home, self.xdg, self.system):
            d.mkdir()
        self.environ = {"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.xdg), "DATA": "/srv/data"}

    @property
    def project_dir(self) -> Path:
        return self.cwd / ".sbx" / "profiles"

    @property
    def user_dir(self) -> Path:
        return self.xdg / "sbx" / "profiles"

    def write(self, path: Path, text: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def resolve(self, name: str | None, project: bool = False) -> Profile:
        """`project`: opted in to ./.sbx/profiles/ (--project-profiles)."""
        return resolve(name, cwd=str(self.cwd), environ=self.environ, project=project)

    def error(self, name: str | None, project: bool = False) -> str:
        with pytest.raises(ProfileError) as info:
            self.resolve(name, project)
        message = str(info.value)
        assert "\n" not in message and not message.startswith("sbx: error")
        return message

    def local(self, text: str, name: str = "grader.toml") -> str:
        """Write `name` in the working directory; return how to name it as a path."""
        self.write(self.cwd / name, text)
        return name


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    e = Env(tmp_path)
    monkeypatch.setattr(search, "SYSTEM_DIR", str(e.system))
    return e


def settings(p: Profile) -> dict[str, object]:
    return dict(p.settings)


# ------------------------------------------------------------ the default


def test_builtin_default_equals_shipped_file(env: Env) -> None:
    parsed = env.resolve(str(REPO / "profiles" / "default.toml"))
    assert parsed.settings == DEFAULT.settings
    assert parsed.description == DEFAULT.description
    assert parsed.name == DEFAULT.name == "default"


def test_plain_run_returns_builtin_without_parsing(env: Env) -> None:
    assert env.resolve(None) is DEFAULT
    assert env.resolve("default") is DEFAULT


def test_plain_run_imports_nothing_costly(env: Env) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        before = set(sys.modules)
        from sandbox.config.profile import resolve, DEFAULT
        assert resolve(None, cwd={str(env.cwd)!r}, environ={env.environ!r}) is DEFAULT
        new = set(sys.modules) - before
        allowed = {{"__future__", "sandbox", "sandbox.config", "sandbox.config.profile", "sandbox.config.search",
                    "sandbox.model", "sandbox.model.frozen", "sandbox.model.spec", "sandbox.errors"}}  # errors: imported by every command anyway
        assert new <= allowed, sorted(new - allowed)
        """
    )
    # SYSTEM_DIR is /etc/sbx/profiles in the child; a test host must not have one.
    assert not os.path.lexists("/etc/sbx/profiles/default.toml")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize("where", ["project", "user", "system"])
def test_a_default_toml_in_the_search_path_replaces_the_builtin(env: Env, where: str) -> None:
    directory = {"project": env.project_dir, "user": env.user_dir, "system": env.system}[where]
    path = env.write(directory / "default.toml", 'description = "mine"\n[limits]\nmemory = "1G"\n')
    p = env.resolve(None, project=where == "project")
    assert (p.name, p.source, p.description) == ("default", str(path), "mine")
    assert settings(p) == {"limits.memory": 1 << 30}


def test_a_dangling_default_toml_is_an_error_not_ignored(env: Env) -> None:
    env.user_dir.mkdir(parents=True)
    (env.user_dir / "default.toml").symlink_to(env.root / "gone.toml")
    assert "default.toml: cannot read: No such file or directory" in env.error(None)


def test_extends_default_falls_back_to_builtin_without_a_shipped_file(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(profile_file, "search_path", lambda cwd, environ: [str(env.user_dir)])
    env.write(env.user_dir / "mine.toml", 'extends = "default"\n[limits]\npids = 7\n')
    p = env.resolve("mine")
    assert settings(p) == {**settings(DEFAULT), "limits.pids": 7}
    assert p.description == DEFAULT.description


# ------------------------------------------------------ shipped profiles


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_resolves_with_contract_types(env: Env, name: str) -> None:
    p = env.resolve(name) if name != "default" else env.resolve(str(SHIPPED_PROFILES / "default.toml"))
    assert p.name == name and p.description
    assert p.source == str(SHIPPED_PROFILES / f"{name}.toml")
    for key, value in p.settings:
        assert isinstance(value, TYPES[key]), key
    for key in ("sandbox.env", "sandbox.pass_env", "network.publish", "mounts"):
        value = p.get(key, ())
        assert isinstance(value, tuple)
    assert all(isinstance(pair, tuple) and len(pair) == 2 for pair in p.get("sandbox.env", ()))  # type: ignore[union-attr]
    assert all(isinstance(m, Mount) for m in p.get("mounts", ()))  # type: ignore[union-attr]
    assert p.get("network.mode") == "none"


def test_grader_is_a_judge(env: Env) -> None:
    s = settings(env.resolve("grader"))
    assert s["limits.memory"] == 256 << 20 and s["limits.time"] == 2.0 and s["limits.wall_time"] == 5.0
    assert s["limits.pids"] == 64 and s["limits.output"] == 64 << 20 and s["limits.cpus"] == 1.0
    assert s["sandbox.workdir"] == "/box" and s["sandbox.pass_env"] == ()
    assert s["seccomp.policy"] == "strict"
    assert s["mounts"] == (Mount(target="/box", mode="overlay", source=str(env.cwd)),)


@pytest.mark.parametrize("name", ["ci", "interactive"])
def test_ci_and_interactive_overlay_the_working_directory_in_place(env: Env, name: str) -> None:
    s = settings(env.resolve(name))
    cwd = str(env.cwd)
    assert s["mounts"] == (Mount(target=cwd, mode="overlay", source=cwd),)
    assert s["sandbox.workdir"] == cwd


def test_ci_limits(env: Env) -> None:
    s = settings(env.resolve("ci"))
    assert s["limits.memory"] == 2 << 30 and s["limits.pids"] == 1024
    assert dict(s["sandbox.env"])["CI"] == "true"  # type: ignore[call-overload]


def test_shipped_profiles_do_not_extend_anything() -> None:
    # A user's default.toml (network = host, say) must never leak into grader.
    for name in SHIPPED:
        assert "extends" not in tomllib.loads((REPO / "profiles" / f"{name}.toml").read_text())


def test_profiles_readme_documents_every_shipped_profile() -> None:
    readme = (REPO / "profiles" / "README.md").read_text()
    for path in (REPO / "profiles").glob("*.toml"):
        assert f"## `{path.stem}`" in readme


# -------------------------------------------------------- search order


def test_search_path_order(env: Env) -> None:
    dirs = search_path(str(env.cwd), env.environ)
    assert dirs == [str(env.user_dir), str(env.system), str(SHIPPED_PROFILES)]
    dirs = search_path(str(env.cwd), env.environ, project=True)
    assert dirs == [str(env.project_dir), str(env.user_dir), str(env.system), str(SHIPPED_PROFILES)]


@pytest.mark.parametrize("xdg", [None, "", "relative/dir"])
def test_search_path_without_usable_xdg_uses_home_config(env: Env, xdg: str | None) -> None:
    environ = {"HOME": str(env.home)} | ({} if xdg is None else {"XDG_CONFIG_HOME": xdg})
    assert search_path(str(env.cwd), environ)[0] == str(env.home / ".config/sbx/profiles")


def test_search_path_without_home_skips_user_dir(env: Env) -> None:
    assert search_path(str(env.cwd), {}) == [str(env.system), str(SHIPPED_PROFILES)]


def test_search_order_first_match_wins(env: Env) -> None:
    files = []
    for directory in (env.project_dir, env.user_dir, env.system):
        files.append(env.write(directory / "grader.toml", f'description = "{directory}"\n'))
    for path in files:
        assert env.resolve("grader", project=True).source == str(path)
        path.unlink()
    assert env.resolve("grader").source == str(SHIPPED_PROFILES / "grader.toml")


def test_a_path_is_used_as_given(env: Env) -> None:
    env.write(env.project_dir / "grader.toml", 'description = "project"\n')
    env.write(env.cwd / "grader.toml", 'description = "path"\n')
    for ref in ("grader.toml", "./grader.toml", str(env.cwd / "grader.toml")):
        p = env.resolve(ref)
        assert (p.name, p.description, p.source) == ("grader", "path", str(env.cwd / "grader.toml"))


# -------------------------------------------------------- inheritance


def test_inheritance_chain_merges_tables_and_appends_mounts(env: Env) -> None:
    env.write(
        env.system / "base.toml",
        """
        description = "base"
        [sandbox]
        hostname = "base"
        env = { A = "1", B = "2" }
        pass_env = ["TERM", "LANG"]
        [limits]
        memory = "1G"
        time = "10s"
        [[mount]]
        source = "/srv/a"
        target = "/a"
        [[mount]]
        source = "/srv/b"
        target = "/b"
        """,
    )
    env.write(
        env.user_dir / "mid.toml",
        """
        extends = "base"
        [sandbox.env]
        B = "two"
        C = "3"
        [limits]
        memory = "512M"
        [[mount]]
        target = "/a"
        mode = "tmpfs"
        size = "1M"
        """,
    )
    env.write(
        env.project_dir / "top.toml",
        """
        extends = "mid"
        [sandbox]
        pass_env = ["TZ"]
        [limits]
        time = "unlimited"
        pids = 10
        [[mount]]
        source = "${PWD}/c"
        target = "/c"
        """,
    )
    p = env.resolve("top", project=True)
    assert p.description == "base"  # inherited like any key
    assert settings(p) == {
        "sandbox.hostname": "base",
        "sandbox.env": (("A", "1"), ("B", "two"), ("C", "3")),
        "sandbox.pass_env": ("TZ",),  # lists replace
        "limits.memory": 512 << 20,
        "limits.pids": 10,  # "unlimited" removed limits.time
        "mounts": (
            Mount(target="/a", mode="tmpfs", size=1 << 20),  # same target: replaced in place
            Mount(target="/b", mode="ro", source="/srv/b"),
            Mount(target="/c", mode="ro", source=str(env.cwd / "c")),
        ),
    }


def test_extends_its_own_name_means_the_next_one_in_the_path(env: Env) -> None:
    env.write(env.user_dir / "grader.toml", 'extends = "grader"\n[limits]\nmemory = "64M"\n')
    env.write(env.project_dir / "grader.toml", 'extends = "grader"\n[limits]\ntime = "1s"\n')
    s = settings(env.resolve("grader", project=True))
    assert s["limits.memory"] == 64 << 20 and s["limits.time"] == 1.0
    assert s["limits.wall_time"] == 5.0  # from the shipped grader


def test_extends_a_path_relative_to_the_extending_file(env: Env) -> None:
    env.write(env.root / "lib" / "base.toml", "[limits]\npids = 3\n")
    env.write(env.root / "lib" / "child.toml", 'extends = "base.toml"\n')
    assert settings(env.resolve(str(env.root / "lib" / "child.toml"))) == {"limits.pids": 3}


def test_cycle_is_rejected(env: Env) -> None:
    env.write(env.user_dir / "a.toml", 'extends = "b"\n')
    env.write(env.user_dir / "b.toml", 'extends = "c"\n')
    env.write(env.user_dir / "c.toml", 'extends = "a"\n')
    a, b, c = (str(env.user_dir / f"{n}.toml") for n in "abc")
    assert env.error("a") == f"{a}: 'extends' goes round in a cycle: {a} -> {b} -> {c} -> {a}"


def test_self_extension_by_path_is_a_cycle(env: Env) -> None:
    ref = env.local('extends = "./grader.toml"\n')
    assert env.error(ref) == "grader.toml: 'extends' goes round in a cycle: grader.toml -> grader.toml"


def test_long_chain_is_rejected(env: Env) -> None:
    for n in range(40):
        env.write(env.user_dir / f"p{n}.toml", f'extends = "p{n + 1}"\n')
    assert "'extends' chain is longer than 32 profiles" in env.error("p0")


def test_extends_missing_names_the_extending_file(env: Env) -> None:
    ref = env.local('extends = "gradr"\n', "mine.toml")
    message = env.error(ref)
    assert message.startswith("mine.toml: 'extends': profile 'gradr' not found (did you mean 'grader'?); looked in ")


# ----------------------------------------------------------- messages


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[limits]\nmemroy = "1G"\n', "unknown key 'limits.memroy' (did you mean 'memory'?)"),
        ("[limit]\n", "unknown key 'limit' (did you mean 'limits'?)"),
        ('[sandbox]\nmemory = "1G"\n', "unknown key 'sandbox.memory' (did you mean 'limits.memory'?)"),
        ("[sandbox]\nzzz = 1\n", "unknown key 'sandbox.zzz'"),
        ('[[mount]]\nsorce = "/a"\ntarget = "/a"\n', "unknown key 'mount[1].sorce' (did you mean 'source'?)"),
        (
            '[limits]\nmemory = "256Q"\n',
            "'limits.memory' must be a size above 0 such as 256M, or \"unlimited\", not \"256Q\"",
        ),
        ('[limits]\nmemory = 0\n', "'limits.memory' must be a size above 0 such as 256M, or \"unlimited\", not 0"),
        (
            '[limits]\npids = "64"\n',
            "'limits.pids' must be an integer from 1 to 4194304, or \"unlimited\", not \"64\"",
        ),
        (
            '[limits]\ntime = "2 parsecs"\n',
            "'limits.time' must be a duration above 0 such as 2, 2s, 500ms or 1.5m, or \"unlimited\", "
            'not "2 parsecs"',
        ),
        ("[limits]\ncpus = true\n", "'limits.cpus' must be a number of CPUs above 0 such as 1 or 1.5, "
         'or "unlimited", not true'),
        ('[limits]\ncpuset = "3-1"\n', "'limits.cpuset' must be a CPU list such as \"0-3,6\", not \"3-1\""),
        ('[limits]\nstrict = "yes"\n', "'limits.strict' must be true or false, not \"yes\""),
        (
            '[network]\nmode = "internet"\n',
            "'network.mode' must be one of \"none\", \"host\", \"pasta\", \"nat\", not \"internet\"",
        ),
        ('[network]\npublish = ["80", "80:http"]\n', "'network.publish' must be an array such as "
         '["8080:80", "127.0.0.1:5353:53/udp"], not "80:http"'),
        ('[seccomp]\ndeny = ["ok", 3]\n', "'seccomp.deny' must be an array of system calls such as "
         '["ptrace", "socket(arg0 == AF_NETLINK)"], not 3'),
        ('[seccomp]\ndeny = ["ioctl(arg1 == 0x5412"]\n', "'seccomp.deny': 'ioctl(arg1 == 0x5412': missing ')'"),
        ('[seccomp]\nallow = ["sys-call"]\n', "'seccomp.allow': bad entry 'sys-call' "
         "(a syscall name, optionally with (argN == VALUE, ...))"),
        ('[sandbox]\nhostname = "-x"\n', "'sandbox.hostname' must be a host name of letters, digits, "
         "'-' and '.' (64 at most), not \"-x\""),
        ("[sandbox]\nuid = -1\n", "'sandbox.uid' must be an integer from 0 to 65535, not -1"),
        ("[sandbox]\ngid = 65536\n", "'sandbox.gid' must be an integer from 0 to 65535, not 65536"),
        ('[sandbox]\nworkdir = "box"\n', "'sandbox.workdir' must be an absolute path, not \"box\""),
        ('[sandbox]\nenv = { "A B" = "1" }\n', "'sandbox.env' must be a table such as { LANG = \"C.UTF-8\" } "
         "or an array of \"NAME=value\", with names of letters, digits and '_', not \"A B\""),
        ('[sandbox]\nenv = ["A=1", "B"]\n', "'sandbox.env' must be a table such as { LANG = \"C.UTF-8\" } "
         "or an array of \"NAME=value\", not \"B\""),
        ("[sandbox]\nenv = { A = 1 }\n", "'sandbox.env' must be a table such as { LANG = \"C.UTF-8\" } "
         "or an array of \"NAME=value\", with string values, not 1"),
        ('[sandbox]\ndisk = "1.5X"\n', "'sandbox.disk' must be a size above 0 such as 512K, 256M or 1.5G "
         '(binary units), not "1.5X"'),
        ('[seccomp]\naction = "panic"\n', "'seccomp.action' must be one of \"errno\", \"kill\", \"log\", "
         'not "panic"'),
        ("limits = 3\n", "'limits' must be a table ([limits]), not 3"),
        ('[mount]\nsource = "/a"\n', "'mount' must be an array of tables ([[mount]]), not a table"),
        ('[[mount]]\nsource = "/a"\n', "'mount[1]' needs a target: the path inside the sandbox"),
        ('[[mount]]\ntarget = "/a"\n', "'mount[1]' needs a source: a host path (or mode = \"tmpfs\")"),
        ('[[mount]]\nsource = "/a"\ntarget = "a"\n', "'mount[1].target' must be an absolute path, not \"a\""),
        ('[[mount]]\nsource = "/a"\ntarget = "/"\n', "'mount[1].target' must be a path below /, not \"/\""),
        (
            '[[mount]]\nsource = "/a"\ntarget = "/a"\nmode = "rx"\n',
            "'mount[1].mode' must be one of \"ro\", \"rw\", \"overlay\", \"tmpfs\", not \"rx\"",
        ),
        ('[[mount]]\nsource = "/a"\ntarget = "/a"\nsize = "1M"\n', "'mount[1].size' applies only to mode = \"tmpfs\""),
        (
            '[[mount]]\nsource = "/a"\ntarget = "/a"\nmode = "tmpfs"\n',
            "'mount[1].source' does not apply to mode = \"tmpfs\"",
        ),
        (
            '[[mount]]\nsource = "/a"\ntarget = "/a"\n[[mount]]\nsource = "/b"\ntarget = "/a/"\n',
            "'mount[2].target' /a is mounted twice in this file",
        ),
        ('[[mount]]\nsource = "$NOPE/x"\ntarget = "/a"\n', "'mount[1].source' uses $NOPE, which is not set"),
        (
            '[[mount]]\nsource = "a$"\ntarget = "/a"\n',
            "'mount[1].source' must be a path where $ starts $NAME or ${NAME} ($$ is a literal $) "
            'and ~ only ~/..., not "a$"',
        ),
        ('description = "two\\nlines"\n', "'description' must be one line of text, not \"two\\nlines\""),
        ("extends = 3\n", "'extends' must be a profile name or a path to a .toml file, not 3"),
        ("[limits\n", "invalid TOML: expected ']' at the end of a table declaration"),
    ],
)
def test_error_messages(env: Env, text: str, message: str) -> None:
    ref = env.local(text)
    got = env.error(ref)
    if message.startswith("invalid TOML"):
        assert got == f"grader.toml:1:8: {message}"
    else:
        assert got == f"grader.toml: {message}"


def test_invalid_toml_gives_line_and_column(env: Env) -> None:
    ref = env.local('description = "x"\n[limits]\nmemory = 256M\n')
    assert env.error(ref) == (
        "grader.toml:3:13: invalid TOML: expected newline or end of document after a statement"
    )
    ref = env.local("a = [1,\n")
    assert env.error(ref) == "grader.toml:2:1: invalid TOML: invalid value"


def test_not_utf8_gives_line_and_column(env: Env) -> None:
    (env.cwd / "grader.toml").write_bytes(b'description = "x"\nhostname = "\xff"\n')
    assert env.error("grader.toml") == "grader.toml:2:13: invalid TOML: not UTF-8 text"


def test_missing_profile_names_where_sbx_looked(env: Env) -> None:
    assert env.error("nope") == (
        f"profile 'nope' not found; looked in {env.user_dir}, {env.system}, {SHIPPED_PROFILES}"
    )
    assert env.error("nope", project=True) == (
        f"profile 'nope' not found; looked in ./.sbx/profiles, {env.user_dir}, {env.system}, {SHIPPED_PROFILES}"
    )


def test_missing_profile_suggests_a_close_name(env: Env) -> None:
    env.write(env.user_dir / "mygrader.toml", "")
    assert env.error("mygradr").startswith("profile 'mygradr' not found (did you mean 'mygrader'?); looked in")


def test_missing_file(env: Env) -> None:
    assert env.error("./nope.toml") == "profile file nope.toml not found"
    assert env.error("grader.toml") == (
        "profile file grader.toml not found (for the profile named 'grader', write just grader)"
    )


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a b", "über"])
def test_invalid_name(env: Env, name: str) -> None:
    assert env.error(name).startswith("invalid profile name ")


def test_a_directory_or_fifo_is_not_a_profile(env: Env) -> None:
    (env.cwd / "dir.toml").mkdir()
    os.mkfifo(env.cwd / "fifo.toml")
    assert env.error("dir.toml") == "dir.toml: not a regular file"
    assert env.error("fifo.toml") == "fifo.toml: not a regular file"  # and it did not hang


def test_a_huge_file_is_refused(env: Env) -> None:
    ref = env.local("#" * (2 << 20))
    assert env.error(ref) == "grader.toml: larger than 1M: not a profile"


# -------------------------------------------------------------- values


def test_units_and_numbers(env: Env) -> None:
    ref = env.local(
        """
        [sandbox]
        disk = "1.5G"
        tmp_size = 4096
        [limits]
        memory = "256MiB"
        cpus = 2
        time = "500ms"
        wall_time = 3
        output = 0
        stack = "8m"
        io_read_bps = "50M"
        """
    )
    assert settings(env.resolve(ref)) == {
        "sandbox.disk": 3 << 29,
        "sandbox.tmp_size": 4096,
        "limits.memory": 256 << 20,
        "limits.cpus": 2.0,
        "limits.time": 0.5,
        "limits.wall_time": 3.0,
        "limits.output": 0,
        "limits.stack": 8 << 20,
        "limits.io_read_bps": 50 << 20,
    }


def test_env_as_podman_style_list(env: Env) -> None:
    ref = env.local('[sandbox]\nenv = ["A=1", "B=x=y", "C="]\n')
    assert settings(env.resolve(ref))["sandbox.env"] == (("A", "1"), ("B", "x=y"), ("C", ""))


def test_seccomp_and_network(env: Env) -> None:
    ref = env.local(
        """
        [seccomp]
        policy = "default"
        allow = ["ptrace"]
        deny = ["io_uring_setup", "keyctl", "socket(arg0 == AF_PACKET)", "ioctl(arg1 & 0xffffffff == 0x5412)"]
        action = "kill"
        [network]
        mode = "pasta"
        publish = ["8080:80", "127.0.0.1:5353:53/udp", "[::1]:8443:443/tcp", "9000"]
        """
    )
    s = settings(env.resolve(ref))
    assert s["seccomp.deny"] == (
        "io_uring_setup",
        "keyctl",
        "socket(arg0 == AF_PACKET)",
        "ioctl(arg1 & 0xffffffff == 0x5412)",
    )
    assert s["seccomp.action"] == "kill"
    assert s["network.publish"] == ("8080:80", "127.0.0.1:5353:53/udp", "[::1]:8443:443/tcp", "9000")


def test_expansion_in_mount_paths_and_workdir(env: Env) -> None:
    ref = env.local(
        """
        [sandbox]
        workdir = "${PWD}/src"
        [[mount]]
        source = "~/.cache/pip"
        target = "~/.cache/pip"
        [[mount]]
        source = "$DATA/set"
        target = "/data"
        [[mount]]
        source = "${DATA}$$x"
        target = "/lit"
        [[mount]]
        source = "relative/../dir"
        target = "/rel"
        mode = "rw"
        [[mount]]
        source = "$UNSET_VAR/x"
        target = "/gone"
        optional = true
        [[mount]]
        target = "/scratch"
        mode = "tmpfs"
        """
    )
    s = settings(env.resolve(ref))
    assert s["sandbox.workdir"] == f"{env.cwd}/src"
    home = str(env.home)
    assert s["mounts"] == (
        Mount(target=f"{home}/.cache/pip", source=f"{home}/.cache/pip"),
        Mount(target="/data", source="/srv/data/set"),
        Mount(target="/lit", source="/srv/data$x"),
        Mount(target="/rel", mode="rw", source=f"{env.cwd}/dir"),
        Mount(target="/scratch", mode="tmpfs"),
    )


def test_pwd_is_the_given_cwd_not_the_environment(env: Env) -> None:
    env.environ["PWD"] = "/elsewhere"
    assert settings(env.resolve("grader"))["mounts"][0].source == str(env.cwd)  # type: ignore[index]


def test_unlimited_removes_an_inherited_limit(env: Env) -> None:
    ref = env.local('extends = "grader"\n[limits]\nmemory = "unlimited"\ntime = "unlimited"\n', "mine.toml")
    s = settings(env.resolve(ref))
    assert "limits.memory" not in s and "limits.time" not in s and s["limits.pids"] == 64


def test_profile_get(env: Env) -> None:
    p = env.resolve("grader")
    assert p.get("limits.pids") == 64 and p.get("limits.cpuset") is None and p.get("x", 5) == 5


# ---------------------------------------------------- the ./.sbx/ rule


def project_error(env: Env, text: str) -> str:
    env.write(env.project_dir / "p.toml", text)
    return env.error("p", project=True)


def test_project_profile_may_bind_inside_the_project(env: Env) -> None:
    (env.cwd / "data").mkdir()
    (env.cwd / "link").symlink_to("data")
    env.write(
        env.project_dir / "p.toml",
        """
        [[mount]]
        source = "${PWD}/link"
        target = "/data"
        mode = "overlay"
        [[mount]]
        source = "."
        target = "/src"
        """,
    )
    p = env.resolve("p", project=True)
    real = os.path.realpath(env.cwd)
    # The checked, resolved path is what gets bound, not the symlink.
    assert settings(p)["mounts"] == (
        Mount(target="/data", mode="overlay", source=f"{real}/data"),
        Mount(target="/src", source=real),
    )


@pytest.mark.parametrize("source", ["~/.ssh", "/etc", "..", "${PWD}/../other", "$DATA", "link/x"])
def test_project_profile_cannot_bind_outside_the_project(env: Env, source: str) -> None:
    (env.cwd / "link").symlink_to(env.home)
    message = project_error(env, f'[[mount]]\nsource = "{source}"\ntarget = "/x"\n')
    assert message.startswith(".sbx/profiles/p.toml: 'mount[1].source' ")
    assert f"is outside the project directory {os.path.realpath(env.cwd)}" in message
    assert "SECURITY.md" in message


def test_project_profile_cannot_bind_read_write(env: Env) -> None:
    message = project_error(env, '[[mount]]\nsource = "."\ntarget = "/x"\nmode = "rw"\n')
    assert message.startswith(".sbx/profiles/p.toml: 'mount[1].mode' cannot be \"rw\" in a profile from ./.sbx/")


def test_project_profile_cannot_pass_secrets(env: Env) -> None:
    message = project_error(env, '[sandbox]\npass_env = ["TERM", "GITHUB_TOKEN"]\n')
    assert message.startswith(".sbx/profiles/p.toml: 'sandbox.pass_env' cannot copy GITHUB_TOKEN")
    env.write(env.project_dir / "p.toml", '[sandbox]\npass_env = ["TERM", "LC_ALL", "LANG"]\n')
    assert settings(env.resolve("p", project=True))["sandbox.pass_env"] == ("TERM", "LC_ALL", "LANG")


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ('[network]\nmode = "host"\n', "'network.mode' cannot be \"host\" in a profile from ./.sbx/: "),
        ('[network]\nmode = "pasta"\n', "'network.mode' cannot be \"pasta\" in a profile from ./.sbx/: "),
        ('[network]\npublish = ["80"]\n', "'network.publish' cannot be set in a profile from ./.sbx/ "),
        ('[seccomp]\npolicy = "none"\n', "'seccomp.policy' cannot be \"none\" in a profile from ./.sbx/: "),
        ('[seccomp]\naction = "log"\n', "'seccomp.action' cannot be \"log\" in a profile from ./.sbx/: "),
        ('[seccomp]\nallow = ["ptrace"]\n', "'seccomp.allow' cannot be set in a profile from ./.sbx/: "),
        ('[landlock]\nenabled = false\n', "'landlock.enabled' cannot be false in a profile from ./.sbx/: "),
        ('[landlock]\nwrite = "root"\n', "'landlock.write' cannot be \"root\" in a profile from ./.sbx/: "),
        ('[landlock]\nnoexec = []\n', "'landlock.noexec' cannot be set in a profile from ./.sbx/: "),
        ('[landlock]\ntcp_connect = [443]\n', "'landlock.tcp_connect' cannot be set in a profile from ./.sbx/: "),
    ],
)
def test_project_profile_cannot_widen_what_the_sandbox_reaches(env: Env, text: str, start: str) -> None:
    message = project_error(env, text)
    assert message.startswith(f".sbx/profiles/p.toml: {start}") and "SECURITY.md" in message


def test_project_profile_may_tighten_seccomp_and_change_limits(env: Env) -> None:
    env.write(
        env.project_dir / "p.toml",
        '[network]\nmode = "none"\n[seccomp]\npolicy = "strict"\ndeny = ["ptrace"]\n[limits]\nmemory = "8G"\n',
    )
    assert settings(env.resolve("p", project=True))["seccomp.deny"] == ("ptrace",)


def test_project_profile_may_extend_a_trusted_profile_that_uses_host_network(env: Env) -> None:
    env.write(env.user_dir / "net.toml", '[network]\nmode = "host"\n')
    env.write(env.project_dir / "p.toml", 'extends = "net"\n')
    assert settings(env.resolve("p", project=True))["network.mode"] == "host"  # your file, your choice


def test_project_profile_cannot_extend_a_file_outside(env: Env) -> None:
    env.write(env.root / "evil.toml", '[[mount]]\nsource = "/"\ntarget = "/host"\n')
    message = project_error(env, f'extends = "{env.root}/evil.toml"\n')
    assert message.startswith(".sbx/profiles/p.toml: 'extends': ")
    assert "is outside the project directory" in message


def test_rule_follows_path_extends_inside_the_project(env: Env) -> None:
    env.write(env.cwd / "tools" / "base.toml", '[[mount]]\nsource = "~"\ntarget = "/home"\n')
    message = project_error(env, 'extends = "../../tools/base.toml"\n')
    assert message.startswith("tools/base.toml: 'mount[1].source' ")


def test_project_profile_may_extend_trusted_profiles_by_name(env: Env) -> None:
    env.write(env.user_dir / "mine.toml", '[[mount]]\nsource = "~/.cache"\ntarget = "/cache"\n')
    env.write(env.project_dir / "p.toml", 'extends = "mine"\n')
    assert settings(env.resolve("p", project=True))["mounts"] == (Mount(target="/cache", source=f"{env.home}/.cache"),)


def test_rule_applies_to_a_project_profile_named_by_path(env: Env) -> None:
    env.write(env.project_dir / "p.toml", '[[mount]]\nsource = "/etc"\ntarget = "/x"\n')
    assert "outside the project directory" in env.error("./.sbx/profiles/p.toml")


def test_rule_applies_through_a_symlink_in_sbx(env: Env) -> None:
    outside = env.write(env.root / "outside.toml", '[[mount]]\nsource = "/etc"\ntarget = "/x"\n')
    env.project_dir.mkdir(parents=True)
    (env.project_dir / "p.toml").symlink_to(outside)
    assert "outside the project directory" in env.error("p", project=True)


def test_the_same_profile_elsewhere_may_bind_anything(env: Env) -> None:
    env.write(env.user_dir / "p.toml", '[[mount]]\nsource = "~/.ssh"\ntarget = "/x"\nmode = "rw"\n')
    assert settings(env.resolve("p", project=True))["mounts"] == (Mount(target="/x", mode="rw", source=f"{env.home}/.ssh"),)


def test_project_default_is_restricted_too(env: Env) -> None:
    env.write(env.project_dir / "default.toml", '[[mount]]\nsource = "~"\ntarget = "/h"\n')
    assert "outside the project directory" in env.error(None, project=True)


# ------------------------------------------------------ writing back


COMPLEX = """
description = "every kind of value: \\"quotes\\", \\\\ and ünïcödé"
[sandbox]
workdir = "/w$$d"
env = { A = "tab\\there", B = "\\u0001" }
uid = 1000
[limits]
cpus = 1.5
cpuset = "0-1,3"
time = 1.2345678
wall_time = "1.5m"
output = "1000001"
[network]
mode = "pasta"
publish = ["8080:80"]
[seccomp]
policy = "none"
deny = ["keyctl"]
[[mount]]
source = "/a$$b"
target = "/a"
mode = "overlay"
optional = true
[[mount]]
target = "/t"
mode = "tmpfs"
size = "3M"
"""


@pytest.mark.parametrize("name", [*SHIPPED, "complex"])
def test_show_output_checks_and_resolves_to_the_same_profile(env: Env, name: str) -> None:
    ref = env.local(COMPLEX, "complex.toml") if name == "complex" else name
    first = env.resolve(ref)
    text = dump.dumps(first)
    tomllib.loads(text)
    shown = env.write(env.root / "shown.toml", text)
    again = env.resolve(str(shown))
    # Keys the profile left unset come back as explicit defaults; nothing else changes.
    assert set(first.settings) <= set(again.settings)
    assert again.description == first.description
    assert dump.dumps(again, header=False) == dump.dumps(first, header=False)
