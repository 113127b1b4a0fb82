#!/usr/bin/env bash
# The Paho interoperability suite: hermes-mqtt against the Eclipse Paho Python client
# (paho-mqtt 2.x), with pytest. Installs paho-mqtt and pytest from PyPI into a virtual
# environment under target/ (or $CARGO_TARGET_DIR) when they are missing there, builds the release broker, and runs
# every case (each starts the brokers it needs on free ports, with temporary data directories).
# Usage: examples/mqtt/interop/paho/run.sh [pytest arguments, e.g. -k keepalive -v]
set -euo pipefail
cd "$(dirname "$0")/../../../.."

TARGET=${CARGO_TARGET_DIR:-$PWD/target}
VENV=$TARGET/paho-venv
PY=$VENV/bin/python
have() { "$PY" -c 'import sys, pytest, paho.mqtt as m; sys.exit(int(m.__version__.split(".")[0]) < 2)' 2>/dev/null; }
if ! have; then
  python3 -m venv "$VENV" 2>/dev/null \
    || { apt-get update && apt-get install -y python3-venv && python3 -m venv "$VENV"; }
  "$PY" -m pip install --quiet --disable-pip-version-check -r examples/mqtt/interop/paho/requirements.txt
  have
fi
cargo build --release -p hermes-mqtt
export HERMES_MQTT_BIN=$TARGET/release/hermes-mqtt
cd examples/mqtt/interop/paho
# Each wait in the suite has its own timeout; this one bounds the whole run.
PYTHONDONTWRITEBYTECODE=1 timeout 600 "$PY" -m pytest -q -p no:cacheprovider "$@"
