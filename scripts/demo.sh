#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded defaults and the shared H&M data.
set -euo pipefail
BIN=${BIN:-.venv/bin}
HM=${HM:-../shared/data/hm}
R="$BIN/revision"
WH=${REVISION_HOME:-.revision}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/10 import the H&M catalog from $HM"
$R catalog import "$HM" --format hm

step "2/10 embed the catalog photos and build the FAISS indexes (cached: fast on a rerun)"
$R index build

step "3/10 adapt the search space to phone photos (simulated photos; held-out designs excluded)"
$R index adapt --products 2000

step "4/10 train the visual attribute heads (colour, type, pattern, index group)"
$R vision train-attributes

step "5/10 search with two simulated user photos"
mkdir -p "$WH/demo"
$R vision query-photo "$HM/images/011/0111565001.jpg" --severity medium --seed 1 --out "$WH/demo/q1.jpg"
$R vision query-photo "$HM/images/050/0500435076.jpg" --severity mild --seed 2 --out "$WH/demo/q2.jpg"
$R search "$WH/demo/q1.jpg" "$WH/demo/q2.jpg" --top-k 5

step "6/10 simulate a few thousand requests from users with hidden intents (default world)"
$R simulate --users 500 --days 2 --requests 3000 --seed 1

step "7/10 extract no-click requests: behavioural bot filter, low-quality photos"
$R logs train-bot-filter --labels sim/truth
$R logs no-click --window 30
$R logs stats

step "8/10 mine no-click requests into Action -> Info signals (embedded analyst)"
$R mine run --input logs/no_click --backend embedded --limit 300
$R mine show --limit 3

step "9/10 cluster the mined actions with the shipped ontology; write the tool list"
$R cluster run --input mining/signals
$R cluster tools

step "10/10 baseline results beside a plan built from each query's mined signals"
$R tools compare --mined 3 --exclude text_search --top-k 5
$R tools graph "(1) (7) (9)" --out "$WH/demo/plan.png"

step "outputs"
echo "warehouse:        $WH"
echo "catalog:          $WH/catalog/products"
echo "indexes:          $WH/artifacts/index"
echo "models:           $WH/artifacts/models (attribute heads, adapter, bot filter)"
echo "search logs:      $WH/logs (requests, impressions, clicks, orders, no_click)"
echo "logs report:      $WH/artifacts/reports/logs.html"
echo "mined signals:    $WH/mining/signals"
echo "clustering:       $WH/clustering/assignments, report under $WH/artifacts/clustering/runs"
echo "tool list:        $WH/artifacts/tools/toollist.json"
echo "plan picture:     $WH/demo/plan.png"
