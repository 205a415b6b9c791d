#!/usr/bin/env bash
# Runs Session Vault on the embedded SQLite default, with its state in .run/:
# a master key generated on first start (kept in .run/master.key, mode 600),
# the database .run/vault.db, and bootstrap tokens in .run/tokens.env.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
mkdir -p .run && chmod 700 .run
if [ ! -f .run/master.key ]; then
  (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32))' > .run/master.key)
fi
if [ ! -f .run/tokens.env ]; then
  (umask 077 && "$PY" - > .run/tokens.env <<'PYEOF'
import secrets
print(f"VAULT_ADMIN_TOKEN={secrets.token_urlsafe(24)}")
print(f"VAULT_NODE_TOKEN={secrets.token_urlsafe(24)}")
PYEOF
  )
fi
set -a; source .run/tokens.env; set +a
export VAULT_MASTER_KEY_FILE="$PWD/.run/master.key"
export VAULT_DATABASE_URL="${VAULT_DATABASE_URL:-sqlite:///$PWD/.run/vault.db}"
echo "Session Vault: admin token in .run/tokens.env; Ctrl-C stops it." >&2
exec "$PY" -m vault_service "$@"
