#!/usr/bin/env bash
# The main job (README): installs ringwatch into .venv, then runs the demo:
# a simulated call centre speaking Asterisk AMI on loopback (or, with --recordings,
# the real Asterisk recordings in a loop), the daemon attached to it, and the HTTP
# server (websocket alerts, /metrics). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e . >/dev/null
exec .venv/bin/ringwatch demo "$@"
