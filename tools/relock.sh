#!/usr/bin/env bash
# Regenerate constraints.txt: resolve pyproject.toml's dependencies afresh in a throw-away venv
# and pin every package. Run after changing dependencies; commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -e '.[test]'
"$venv/bin/pip" freeze --exclude-editable | grep -v '^-e ' > constraints.txt
echo "constraints.txt: $(wc -l < constraints.txt) pins"
