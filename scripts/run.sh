#!/usr/bin/env bash
# Runs Session Vault on the embedded SQLite default: the vault and one session
# node, with all state under .run/ (master key generated on first start and kept
# in .run/master.key, mode 600; tokens in .run/tokens.env; vault database
# .run/vault.db; node data .run/node-a/).
#
#   bash scripts/run.sh                  # neonize driver: scan the QR code to pair session "main"
#   bash scripts/run.sh --simulated      # offline demo: whatsmeow-shaped traffic, versions rising
#   bash scripts/run.sh --session NAME   # another session name (repeatable)
#
# Ctrl-C stops both (the node flushes and releases its leases first).
set -euo pipefail
cd "$(dirname "$0")/.."
driver=neonize
sessions=()
while [ $# -gt 0 ]; do
  case "$1" in
    --simulated) driver=simulated ;;
    --session) sessions+=("$2"); shift ;;
    *) echo "run.sh: unknown argument $1 (use --simulated, --session NAME)" >&2; exit 2 ;;
  esac
  shift
done
[ ${#sessions[@]} -gt 0 ] || sessions=(main)
source scripts/bootstrap.sh
mkdir -p .run && chmod 700 .run
if [ ! -f .run/master.key ]; then
  (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32))' > .run/master.key)
fi
if [ ! -f .run/tokens.env ]; then
  (umask 077 && "$PY" -c 'import secrets
print(f"VAULT_ADMIN_TOKEN={secrets.token_urlsafe(24)}")
print(f"VAULT_NODE_TOKEN={secrets.token_urlsafe(24)}")' > .run/tokens.env)
fi
set -a; source .run/tokens.env; set +a
export VAULT_MASTER_KEY_FILE="$PWD/.run/master.key"
export VAULT_DATABASE_URL="${VAULT_DATABASE_URL:-sqlite:///$PWD/.run/vault.db}"
export VAULT_LISTEN="${VAULT_LISTEN:-127.0.0.1:50051}"

# Own sessions (setsid): Ctrl-C reaches only this script, which stops the node first, then the vault.
setsid "$PY" -m vault_service &
vault_pid=$!
node_pid=""
cleanup() {
  [ -n "$node_pid" ] && kill -TERM "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true
  kill -TERM "$vault_pid" 2>/dev/null && wait "$vault_pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

args=()
for s in "${sessions[@]}"; do args+=(--session "$s"); done
if [ "$driver" = simulated ]; then args+=(--sim-rate 2); fi
SESSION_NODE_TOKEN="$VAULT_NODE_TOKEN" setsid "$PY" -m session_node --node-id a --vault "$VAULT_LISTEN" \
  --data-dir .run/node-a --driver "$driver" "${args[@]}" &
node_pid=$!
echo "Session Vault on $VAULT_LISTEN (tokens in .run/tokens.env), node a ($driver driver): ${sessions[*]}. Ctrl-C stops." >&2
# The vault outlives node a (kill it to try a failover); Ctrl-C ends both.
wait "$vault_pid"
