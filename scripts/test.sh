#!/usr/bin/env bash
# Install everything, then run the whole test suite: lint, types, unit and
# integration tests (real inotify, rsync, ZeroMQ and an sshd on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
python3 -m ruff check syncsup tests
python3 -m mypy
python3 -m pytest -q -p no:cacheprovider "$@"
