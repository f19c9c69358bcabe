#!/usr/bin/env sh
# Start the Nightshift consumer with settings from the environment (see `nightshift config` / docs).
# Given a command (e.g. `run_worker.sh nightshift submit ...`), run that instead: the same image is the producer.
set -eu
case "${1:-}" in
  nightshift|python|python3|sh|bash) exec "$@" ;;
esac
if ! command -v nightshift >/dev/null 2>&1; then
  here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
  if [ -x "$here/.venv/bin/nightshift" ]; then
    PATH="$here/.venv/bin:$PATH"
  else
    echo "run_worker.sh: the nightshift command is not installed; run: python3 -m venv .venv && .venv/bin/pip install -e ." >&2
    exit 127
  fi
fi
exec nightshift worker "$@"
