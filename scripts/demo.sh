#!/usr/bin/env bash
# Install syncsup and run a demo mirror in the foreground: demo/source is
# mirrored to demo/target. Change files in demo/source from another terminal
# and watch them appear; `syncsup status demo/sync.toml` shows the daemon.
# Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# syncsup refuses a config others may write (a clone made with umask 002
# gives 0664 files): the demo's config is ours alone.
chmod go-w demo/sync.toml
echo
echo "syncsup demo: mirroring $(pwd)/demo/source -> $(pwd)/demo/target"
echo "  try:  echo hello > demo/source/new.txt && ls demo/target"
echo "        syncsup status demo/sync.toml"
echo "  stop: Ctrl-C"
echo
exec syncsup start demo/sync.toml
