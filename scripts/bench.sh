#!/usr/bin/env bash
# Reproduces the README's Performance table: every scenario of `backstop
# bench` on SQLite and on Postgres, against a release build, over loopback.
# Usage: scripts/bench.sh [postgres-url]   (default: $BACKSTOP_BENCH_POSTGRES_URL,
# else postgres://postgres@127.0.0.1:5432/test; each run makes a fresh schema)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
bin=target/release/backstop
pg="${1:-${BACKSTOP_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}}"
for db in sqlite postgres; do
    extra=()
    [ "$db" = postgres ] && extra=(--postgres "$pg")
    "$bin" bench --scenario ingest --requests 20000 --concurrency 32 "${extra[@]}"
    "$bin" bench --scenario ingest --requests 10000 --rate 1000 "${extra[@]}"
    "$bin" bench --scenario storm --requests 10000 --concurrency 32 "${extra[@]}"
    "$bin" bench --scenario rollback --requests 200 "${extra[@]}"
    "$bin" bench --scenario cold-start --requests 20 "${extra[@]}"
    "$bin" bench --scenario growth --deployments 20000 --runs 1000000 --requests 100 "${extra[@]}"
    for n in 1 20 100; do
        "$bin" bench --scenario fleet --services "$n" --domains 3 --latency-ms 100 "${extra[@]}"
    done
    # Against Vercel's published rate limits (120 alias creations a window,
    # the window shortened to 10 s): who moves whole, who is held and paged
    # at once and rolled back at the reset, none half moved.
    "$bin" bench --scenario fleet --services 100 --domains 3 --latency-ms 100 --vercel-limits "${extra[@]}"
    # The same with the agents on and their model endpoint hanging.
    for n in 1 20; do
        "$bin" bench --scenario fleet --services "$n" --domains 3 --latency-ms 100 --ai-hang "${extra[@]}"
    done
done
"$bin" bench --scenario hostile --requests 2000 --rate 200 --slow-clients 1000 --flood-rate 500
"$bin" bench --scenario ingest --requests 2000 --rate 200
