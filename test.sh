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
packages=(python3 python3-venv python3-dev gcc g++ libc6-dev libseccomp2 bubblewrap passt slirp4netns nftables uidmap golang-go openjdk-17-jdk-headless busybox-static zstd docker-registry skopeo openssl)

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
  "$venv/bin/pip" install -q --disable-pip-version-check -e ".[test]" --config-settings editable_mode=compat
  chmod -R a+rX "$venv"
fi
py=$venv/bin/python

echo "== mypy"
"$py" -m mypy

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
      && "$wheel_venv/bin/pip" install -q --disable-pip-version-check "$wheel[test]"; then
    chmod -R a+rX "$wheel_venv"
    echo "== tests as $test_user (rootless), sbx installed from $(basename "$wheel")"
    su "$test_user" -s /bin/bash -c "cd '$wheel_stage/tree' && SBX_TEST_INSTALLED=1 '$wheel_venv/bin/python' -m pytest $*" \
      || status=$?
    # The same user without subordinate ids (the payload is the caller): the containment battery
    # and the identity, stdio and report tests, which check that mode's own guarantees.
    echo "== containment tests as $test_user (rootless) without id ranges (SBX_ID_RANGES=0)"
    su "$test_user" -s /bin/bash -c "cd '$wheel_stage/tree' && SBX_ID_RANGES=0 SBX_TEST_INSTALLED=1 '$wheel_venv/bin/python' -m pytest -q tests/test_attacks.py tests/test_identity.py tests/test_host_stdio.py tests/test_host_reports.py tests/test_profiles_run.py tests/test_isolation.py tests/test_mounts.py" \
      || status=$?
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
  echo "== not root: the rootless suite ran; the root suite and the cgroup v2 VM stage need root (CI runs both)"
fi
exit $status
