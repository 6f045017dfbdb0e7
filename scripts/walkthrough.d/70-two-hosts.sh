# Optional (ORCH_WALKTHROUGH_POSTGRES=1): two hosts, one PostgreSQL. The walkthrough's
# SQLite store moves to a PostgreSQL database with migrate-store; then host-a and
# host-b (each its own ORCH_HOST_ID, state dir and artefacts dir, the same ORCH_DB) take
# turns at every timer through a whole round of a new ticket: what one host's agent
# wrote, the other host's gate reads from the database (docs/scale-out.md).
if [ -n "${ORCH_WALKTHROUGH_POSTGRES:-}" ]; then
  step "two hosts, one PostgreSQL: a throwaway cluster on 127.0.0.1 and a database for orch"
  pg_admin=$(scripts/pg-cluster start)
  pg_db="orch_walk_$$"
  printf '$ psql %s -c "CREATE DATABASE %s"\n' "$pg_admin" "$pg_db"
  psql -X -q "$pg_admin" -c "CREATE DATABASE $pg_db"
  pg_url="${pg_admin%/*}/$pg_db"
  pg_drop() { psql -X -q "$pg_admin" -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" || true; }
  trap 'pg_drop; cleanup' EXIT

  step "the store moves over: every row of the SQLite file, in one checked transaction"
  show orch migrate-store --to "$pg_url"
  export ORCH_DB="$pg_url"
  on_host() {
    export ORCH_HOST_ID=$1 ORCH_STATE_DIR="$WALK/$1/state" ORCH_ARTEFACTS_DIR="$WALK/$1/artefacts"
    mkdir -p "$ORCH_STATE_DIR" "$ORCH_ARTEFACTS_DIR"
    echo "(on $1)"
  }
  host_turn=0
  next_host() {
    host_turn=$((host_turn + 1))
    if [ $((host_turn % 2)) = 1 ]; then on_host host-b; else on_host host-a; fi
  }
  on_host host-a
  show orch status

  step "host-a takes a new ticket by hand; host-b's dispatch runs its analyst"
  show orch task add --project shop --work-item 3f9a1c0e-8b7d-4c2a-a1e5-0000000000c9 --key SHOP-9 --title "Two hosts"
  next_host; run_job
  expect_stage SHOP-9 analysis
  on_host host-a
  show orch task move SHOP-9 --to development --reason "approved (the walkthrough's human)"

  round SHOP-9 acme/shop 1
  step "SHOP-9 went round on two hosts, each job on the host whose dispatch claimed it"
  show orch task show SHOP-9
  pg_drop
fi
