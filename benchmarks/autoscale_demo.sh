#!/usr/bin/env bash
# Autoscaling demonstration: a timing-engine cluster with the planner on, under a ramp whose first half is
# prompt-heavy (loads the prefill tier) and whose second half is generation-heavy (loads the decode tier).
# Writes benchmarks/results/autoscale/ramp.json, its replicas-over-time CSV and PNG, and status.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/autoscale
mkdir -p "$out"
ready="$out/ready.json"; rm -f "$ready"
.venv/bin/pdserve up --config benchmarks/autoscale_demo.yaml --grpc-port 0 --http-port 0 --ready-file "$ready" \
    > "$out/server.log" 2>&1 &
server=$!
trap 'kill -INT $server 2>/dev/null; wait $server' EXIT
for _ in $(seq 300); do [[ -f "$ready" ]] && break; sleep 1; done
target=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['grpc'])" "$ready")
.venv/bin/pdserve bench --target "$target" --ramp --rate 1 --ramp-shape 0.5,3,0.5,3,0.5 \
    --ramp-lengths 768x4,768x4,64x4,64x192,64x4 --duration-s 250 --ramp-tail-s 60 --num-requests 5000 \
    --quiet --out "$out/ramp.json"
.venv/bin/pdserve status --target "$target" --json > "$out/status.json"
