#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded defaults and the shared H&M data:
# the offline loop (simulate, no-click, mine, cluster, tool list), then the online half (a
# trained planner, the service answering a photo, an A/B test through it).
set -euo pipefail
BIN=${BIN:-.venv/bin}
HM=${HM:-../shared/data/hm}
R="$BIN/revision"
WH=${REVISION_HOME:-.revision}
PORT=${PORT:-8765}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/13 import the H&M catalog from $HM"
$R catalog import "$HM" --format hm

step "2/13 embed the catalog photos, build the FAISS indexes and the catalog text index (cached)"
$R index build

step "3/13 adapt the search space to phone photos (simulated photos; held-out designs excluded)"
$R index adapt --products 2000

step "4/13 train the visual attribute heads (colour, type, pattern, index group)"
$R vision train-attributes

step "5/13 search with two simulated user photos"
mkdir -p "$WH/demo"
$R vision query-photo "$HM/images/011/0111565001.jpg" --severity medium --seed 1 --out "$WH/demo/q1.jpg"
$R vision query-photo "$HM/images/050/0500435076.jpg" --severity mild --seed 2 --out "$WH/demo/q2.jpg"
$R search "$WH/demo/q1.jpg" "$WH/demo/q2.jpg" --top-k 5

step "6/13 simulate a week of traffic: users with hidden intents, habits and follow-ups"
$R simulate --users 2000 --days 7 --requests 20000 --seed 1

step "7/13 extract no-click requests: behavioural bot filter, low-quality photos"
$R logs train-bot-filter --labels sim/truth
$R logs no-click --window 30
$R logs stats

step "8/13 mine no-click requests: photo, results, follow-ups, history -> at most 3 signals"
$R mine run --backend embedded
$R mine show --limit 2

step "9/13 cluster the mined actions with the shipped ontology; write the tool list"
$R cluster run --table mining/signals
$R cluster tools

step "10/13 train the planner on the mined plans (SFT, then GRPO) and evaluate it"
$R planner data
$R planner train --epochs 4 --grpo-steps 30
$R planner eval
$R planner publish

step "11/13 the online service: one photo through POST /v1/search"
$R serve --port "$PORT" > "$WH/demo/serve.log" 2>&1 &
SERVE=$!
trap 'kill $SERVE 2>/dev/null || true' EXIT
"$BIN/python" - "$PORT" "$WH/demo/q1.jpg" <<'PY'
import json, sys, time
import httpx
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(180):  # ready once models, index and the published planner are loaded
    try:
        if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(2)
with open(sys.argv[2], "rb") as photo:
    reply = httpx.post(f"{base}/v1/search", files={"photo": photo}, data={"user_id": "demo-user"}, timeout=30)
doc = reply.json()
print(json.dumps({k: doc.get(k) for k in ("relevance", "triggered", "plan", "applied", "fallback", "cache")}, indent=1))
PY
kill $SERVE 2>/dev/null || true
trap - EXIT

step "12/13 an A/B test through the service: baseline vs REVISION, two simulated days"
$R experiment run --days 2 --requests 6000 --users 2000 --arms baseline,revision --name demo-ab

step "13/13 the plan of a tool DAG as a picture"
$R tools graph "(1) (7) (9)" --out "$WH/demo/plan.png"

step "outputs"
echo "warehouse:        $WH"
echo "catalog:          $WH/catalog/products"
echo "indexes:          $WH/artifacts/index (images), $WH/artifacts/tools/text_index"
echo "models:           $WH/artifacts/models (attribute heads, adapter, bot filter)"
echo "search logs:      $WH/logs (requests, impressions, clicks, orders, events, no_click)"
echo "logs report:      $WH/artifacts/reports/logs.html"
echo "mined signals:    $WH/mining/signals"
echo "clustering:       $WH/clustering/assignments, report under $WH/artifacts/clustering/runs"
echo "tool list:        $WH/artifacts/tools/toollist.json"
echo "planner:          $WH/artifacts/planner/runs/latest (curves, report.html), published under $WH/artifacts/published"
echo "service log:      $WH/demo/serve.log (the page: revision serve, then http://127.0.0.1:8000/)"
echo "A/B report:       $WH/artifacts/reports/experiment.html"
echo "plan picture:     $WH/demo/plan.png"
