#!/usr/bin/env bash
# The test command (README, .ci/run): installs what it needs into .venv, then
# lint (ruff), types (mypy --strict) and the test suite (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
# Tools the deploy tests run (Debian packages): promtool (prometheus) for `promtool test rules`,
# systemd-analyze (systemd) for `systemd-analyze verify`. Installed only when missing and we are
# root with apt-get (as in CI); otherwise those tests skip and say why.
need_pkgs=()
command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need_pkgs+=(systemd)
# the web UI's browser tests (tests/test_ui_browser.py): Debian's chromium over the DevTools protocol, and
# CJK fonts so the zh-CN screenshots show characters
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need_pkgs+=(chromium)
[ -d /usr/share/fonts/opentype/noto ] || need_pkgs+=(fonts-noto-cjk)
# The real SIP rig (tests/test_probe_rig.py): Kamailio as registrar/proxy, baresip as the hotline.
{ command -v kamailio || [ -x /usr/sbin/kamailio ]; } >/dev/null 2>&1 || need_pkgs+=(kamailio)
command -v baresip >/dev/null 2>&1 || need_pkgs+=(baresip-core)
if [ ${#need_pkgs[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== apt-get install ${need_pkgs[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need_pkgs[@]}" >/dev/null; } || echo "warning: could not install ${need_pkgs[*]}" >&2
fi
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
PYTHONASYNCIODEBUG=1 .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
