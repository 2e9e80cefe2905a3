#!/usr/bin/env bash
# Build the benchmark environment and run the whole benchmark: `make bench` runs this.
#
#   benchmarks/.venv   dbscope (editable) + the libraries compared, uvloop, httptools,
#                      matplotlib, pyinstrument; never the project's own .venv
#   wrk                from Debian, installed if missing (needs root)
#
# Arguments are passed to benchmarks/run.py (e.g. --runs 5, --variants blog,dbscope_session).
# Traffic goes to 127.0.0.1 only; every server the run starts is stopped before it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=benchmarks/.venv
FASTAPI_SQLA=fastapi-sqla==4.0.1

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y wrk >/dev/null || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
  else
    echo "wrk is not installed: sudo apt-get install -y wrk" >&2
    exit 2
  fi
fi

if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet --editable '.[fastapi,asyncpg]' -r benchmarks/requirements.txt
# Without its pins: fastapi-sqla declares fastapi<0.142, and every variant must run on the
# same FastAPI. docs/benchmarks.md says so beside its figures.
"$VENV/bin/python" -m pip install --quiet --no-deps "$FASTAPI_SQLA"

exec "$VENV/bin/python" benchmarks/run.py "$@"
