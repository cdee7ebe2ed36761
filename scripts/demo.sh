#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded defaults and the shared H&M data.
set -euo pipefail
BIN=${BIN:-.venv/bin}
HM=${HM:-../shared/data/hm}
R="$BIN/revision"
WH=${REVISION_HOME:-.revision}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. import the H&M catalog from $HM"
$R catalog import "$HM" --format hm

step "2. embed the catalog photos and build the FAISS indexes (cached: fast on a rerun)"
$R index build

step "3. adapt the search space to phone photos (trained on simulated photos, not held-out designs)"
$R index adapt --products 2000

step "3b. train the visual attribute heads (colour, type, pattern, index group)"
$R vision train-attributes

step "4. search with a few simulated user photos"
mkdir -p "$WH/demo"
$R vision query-photo "$HM/images/011/0111565001.jpg" --severity medium --seed 1 --out "$WH/demo/q1.jpg"
$R vision query-photo "$HM/images/$(ls "$HM/images" | sed -n 40p)/$(ls "$HM/images/$(ls "$HM/images" | sed -n 40p)" | head -1)" --severity mild --seed 2 --out "$WH/demo/q2.jpg"
$R search "$WH/demo/q1.jpg" "$WH/demo/q2.jpg" --top-k 5

step "5. simulate a few thousand requests from users with hidden intents (default world)"
$R simulate --users 500 --days 2 --requests 3000 --seed 1

step "6. extract no-click requests: bot filter (trained on behaviour), low-quality photos"
$R logs train-bot-filter --labels sim/truth
$R logs no-click --window 30
$R logs stats

step "outputs"
echo "warehouse:      $WH"
echo "catalog table:  $WH/catalog/products"
echo "indexes:        $WH/artifacts/index"
echo "attribute heads $WH/artifacts/models/attributes.pt"
echo "query photos:   $WH/demo"
echo "search logs:    $WH/logs (requests, impressions, clicks, orders, no_click)"
echo "logs report:    $WH/artifacts/reports/logs.html"
