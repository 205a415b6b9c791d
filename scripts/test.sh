#!/usr/bin/env bash
# The whole test suite: ruff, the contract checks (gencode, buf lint) and
# pytest on SQLite and MariaDB (127.0.0.1:3306, root, or VAULT_TEST_MARIADB_URL).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh dev
BUF=.tools/node_modules/.bin/buf
if [ ! -x "$BUF" ]; then
  npm install --silent --no-save --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0 >/dev/null
fi
if [ -z "${VAULT_TEST_MARIADB_URL:-}" ] && ! mysqladmin -h127.0.0.1 -uroot ping >/dev/null 2>&1; then
  echo "MariaDB is not answering on 127.0.0.1:3306; starting it" >&2
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  for _ in $(seq 1 60); do mysqladmin -h127.0.0.1 -uroot ping >/dev/null 2>&1 && break; sleep 1; done
fi
"$PY" -m ruff check .
"$PY" -m ruff format --check .
exec "$PY" -m pytest "$@"
