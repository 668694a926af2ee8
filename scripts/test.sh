#!/usr/bin/env bash
# The whole test suite on a fresh machine: make the venv, install, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
.venv/bin/ruff check ledger projections adapters scripts tests
.venv/bin/mypy
.venv/bin/bandit -q -r ledger projections adapters
.venv/bin/pytest -q "$@"
