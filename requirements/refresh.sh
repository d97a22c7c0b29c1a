#!/usr/bin/env bash
# Refresh requirements/cpu.lock from pyproject.toml (and requirements/bootstrap.txt: uv, which installs it) (dependencies + the test extra), with hashes, pinning torch to
# its CPU build. Run from anywhere: ./requirements/refresh.sh (a few minutes: pip-tools fetches every hash).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install -q "pip-tools>=7.4"
"$tools/venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --extra test --strip-extras \
  --no-emit-index-url --no-emit-find-links --constraint requirements/torch-cpu.txt \
  --output-file requirements/cpu.lock pyproject.toml
"$tools/venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --no-emit-index-url --no-emit-find-links \
  --output-file requirements/bootstrap.txt requirements/bootstrap.in
echo "wrote requirements/bootstrap.txt (uv, the installer) and requirements/cpu.lock ($(grep -c '==' requirements/cpu.lock) pins)"
