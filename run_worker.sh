#!/usr/bin/env sh
# Start the Nightshift consumer with settings from the environment (`nightshift config` lists them).
# Given a command instead (e.g. `run_worker.sh nightshift submit ...`), run that: the same image is the producer.
set -eu
if ! command -v nightshift >/dev/null 2>&1; then
  here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
  if [ -x "$here/.venv/bin/nightshift" ]; then
    PATH="$here/.venv/bin:$PATH"
  else
    echo "run_worker.sh: the nightshift command is not installed; run: python3 -m venv .venv && .venv/bin/pip install -e ." >&2
    exit 127
  fi
fi
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ] && command -v "$1" >/dev/null 2>&1; then
  exec "$@"
fi
exec nightshift worker "$@"
