#!/usr/bin/env bash
# `make bench`: full-size benchmarks on the default warehouse (built by `make demo` if missing).
set -euo pipefail
BIN=${BIN:-.venv/bin}
HM=${HM:-../shared/data/hm}
if [ ! -f "${REVISION_HOME:-.revision}/artifacts/index/hnsw/meta.json" ]; then
  "$BIN/revision" catalog import "$HM" --format hm
  "$BIN/revision" index build
fi
if [ ! -d "${REVISION_HOME:-.revision}/logs/no_click" ]; then
  HM="$HM" BIN="$BIN" bash scripts/demo.sh  # bench_intents scores the demo's simulated logs
fi
mkdir -p bench/out
for script in bench/bench_*.py; do
  echo "== $script"
  "$BIN/python" "$script" | tee "bench/out/$(basename "$script" .py).md"
done
echo "markdown sections in bench/out/*.md; copy the figures into bench/RESULTS.md"
