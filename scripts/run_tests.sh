#!/usr/bin/env bash
# Runs the test suite with the project venv. pytest's exit code 5 ("no tests collected") would let
# a broken collection pass CI silently, so it is turned into a failure here.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${CPGD_VENV:-$ROOT/.build/venv}/bin/python
cd "$ROOT"
"$PY" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run_tests: pytest collected no tests; treating that as a failure" >&2
  exit 1
fi
exit "$rc"
