#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need on a fresh Debian machine, then runs them
# on each engine, Lua 5.4 then LuaJIT (README: Engines); MOONLET_ENGINES=lua54 runs one.
#   bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# real clients, peers and linters from Debian: redis-cli/redis-benchmark (redis-tools), redis-server,
# PostgreSQL, memcached and memccapable (libmemcached-tools), net-snmp's tools (snmp), luacheck
need=()
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v luacheck >/dev/null || need+=(lua-check)
command -v redis-server >/dev/null || need+=(redis-server)   # a real peer for the client tests
command -v wrk >/dev/null || need+=(wrk)                     # a real HTTP client under load
command -v memcached >/dev/null || need+=(memcached)         # a real peer for apps/memcache.lua
command -v memccapable >/dev/null || need+=(libmemcached-tools)  # libmemcached's protocol checks
command -v snmpget >/dev/null || need+=(snmp)                # net-snmp's tools, for apps/snmp.lua
command -v chromium >/dev/null || need+=(chromium)           # a real browser, for apps/ws_chat.lua
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)  # a real server (tests/postgres.py)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "tests/run.sh: missing ${need[*]}; install with: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
status=0
for engine in ${MOONLET_ENGINES:-lua54 luajit}; do
  echo "tests/run.sh: the suite on $engine"
  MOONLET_ENGINE=$engine .venv/bin/python -m pytest "$@" || status=$?
done
exit $status
