#!/usr/bin/env bash
# Commit only the named paths (several people work in this tree at once); retries while git's index is locked.
# Usage: scripts/commit.sh "message" path [path ...]
set -u
msg=$1; shift
cd "$(dirname "$0")/.."
for i in $(seq 1 30); do
  if git add -- "$@" 2>/tmp/commit.err && git commit -q -m "$msg" -- "$@" 2>>/tmp/commit.err; then
    git log --oneline -1; exit 0
  fi
  if grep -q "index.lock" /tmp/commit.err; then sleep 1; continue; fi
  cat /tmp/commit.err >&2; exit 1
done
echo "gave up: git index stayed locked" >&2; exit 1
