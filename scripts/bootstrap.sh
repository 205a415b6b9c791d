# Sourced by run.sh and test.sh: a project virtualenv in .venv, (re)installed
# when pyproject.toml changes. Needs only python3 and the package registries.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SESSION_VAULT_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
EXTRAS="${1:-}"
stamp="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)${EXTRAS:+-$EXTRAS}"
if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
fi
if [ ! -f "$stamp" ]; then
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  touch "$stamp"
fi
