# Optional (POSTGRES=1): two hosts, one PostgreSQL. The walkthrough's
# SQLite store moves to a PostgreSQL database with migrate-store; then host-a and
# host-b (each its own ORCH_HOST_ID, state dir and artefacts dir, the same ORCH_DB) take
# turns at every timer through a whole round of a new ticket: what one host's agent
# wrote, the other host's gate reads from the database (docs/scale-out.md).
if [ -n "${POSTGRES:-}" ]; then
  step "two hosts, one PostgreSQL: a throwaway cluster on 127.0.0.1 and a database for orch"
  pg_admin=$(scripts/pg-cluster start)
  pg_db="orch_walk_$$"
  printf '$ psql %s -c "CREATE DATABASE %s"\n' "$pg_admin" "$pg_db"
  psql -X -q "$pg_admin" -c "CREATE DATABASE $pg_db"
  pg_url="${pg_admin%/*}/$pg_db"
  pg_drop() { PGOPTIONS="-c client_min_messages=warning" psql -X -q "$pg_admin" -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" || true; }
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

  step "a human starts SHOP-9 in Plane; host-a's webhook socket takes the delivery"
  plane_move "$SHOP_PROJECT" "$SHOP_ITEM9" "$SHOP_IN_PROGRESS"
  deliver "$SHOP_PROJECT" "$SHOP_ITEM9" 9 "Two hosts" "$SHOP_IN_PROGRESS" "In Progress" started d-0901
  step "host-b's dispatch runs the analyst"
  next_host; run_job
  expect_stage SHOP-9 analysis
  step "the human approves SHOP-9; host-a takes the delivery"
  advance 60
  on_host host-a
  plane_move "$SHOP_PROJECT" "$SHOP_ITEM9" "$SHOP_APPROVED"
  deliver "$SHOP_PROJECT" "$SHOP_ITEM9" 9 "Two hosts" "$SHOP_APPROVED" Approved started d-0902
  expect_stage SHOP-9 development
  host_turn=0

  round SHOP-9 acme/shop 1
  step "SHOP-9 went round on two hosts, each job on the host whose dispatch claimed it"
  show orch task show SHOP-9
  pg_drop
fi
