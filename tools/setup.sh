#!/usr/bin/env bash
# Set up a fresh machine for Tollgate: system packages, a virtualenv in .venv, pinned Python packages,
# and the project itself (editable). Safe to run again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

# Debian packages: h2load (nghttp2-client) drives the benchmark; the tests start a real PostgreSQL server
# (postgresql: initdb and pg_ctl under /usr/lib/postgresql/*/bin) for the shared state store; the console's
# browser tests drive Debian's chromium (/usr/bin/chromium) through Playwright, whose own browser download is
# never used (`playwright install` is not run: it fetches from outside the package registries).
need=()
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
  else
    echo "note: missing Debian packages ${need[*]}: install them (the benchmark needs h2load, the tests PostgreSQL" \
      "and, for the console's browser tests, chromium)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.tollgate-installed
want=$(cat requirements.txt requirements-dev.txt pyproject.toml tools/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  .venv/bin/pip install -q --disable-pip-version-check --ignore-requires-python opa-golib-python-bindings==0.4.4
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
