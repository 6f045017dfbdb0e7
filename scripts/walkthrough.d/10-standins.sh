# Stand-ins: loopback Plane and Gitea models, a staging and a production install (each
# reports the revision deployed to it and a health status), and Telegram's Bot API.
# Each serves until its stdin (a fifo we hold open) closes or cleanup kills it; its first
# stdout line is "KIND URL", read through a fifo (an event, not a sleep).
SHOP_PROJECT=3f9a1c0e-8b7d-4c2a-a1e5-6d4b2c9f0a17
SHOP_ITEM=3f9a1c0e-8b7d-4c2a-a1e5-0000000000a7
SHOP_ITEM9=3f9a1c0e-8b7d-4c2a-a1e5-0000000000a9   # the two-host act's ticket (70-two-hosts.sh)
ORCH_PROJECT=7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02
ORCH_ITEM=7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e04
cat > "$WALK/plane-seed.yaml" <<YAML
workspace: acme
projects:
  - id: $ORCH_PROJECT
    states:
      - { id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb2, name: Todo, group: unstarted }
      - { id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb3, name: In Progress, group: started }
      - { id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb6, name: Approved, group: started }
      - { id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb8, name: Blocked, group: started }
      - { id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb4, name: Done, group: completed }
      - { id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb5, name: Cancelled, group: cancelled }
    work_items:
      - { id: $ORCH_ITEM, sequence_id: 42, name: Fix crash saving settings, state: Todo }
  - id: $SHOP_PROJECT
    states:
      - { id: 3f9a1c0e-8b7d-4c2a-a1e5-000000000b01, name: Todo, group: unstarted }
      - { id: 3f9a1c0e-8b7d-4c2a-a1e5-000000000b02, name: In Progress, group: started }
      - { id: 3f9a1c0e-8b7d-4c2a-a1e5-000000000b03, name: Approved, group: started }
      - { id: 3f9a1c0e-8b7d-4c2a-a1e5-000000000b04, name: Done, group: completed }
      - { id: 3f9a1c0e-8b7d-4c2a-a1e5-000000000b05, name: Cancelled, group: cancelled }
    work_items:
      - { id: $SHOP_ITEM, sequence_id: 7, name: Add a basket page, state: Todo }
      - { id: $SHOP_ITEM9, sequence_id: 9, name: Two hosts, state: Todo }
YAML
cat > "$WALK/gitea-seed.yaml" <<'YAML'
repos:
  - name: acme/orch
  - name: acme/shop
YAML

# start_standin NAME KIND [SEED]: runs orch-standin KIND and sets url_NAME to its URL.
start_standin() {
  local name=$1 kind=$2 seed=${3:-} fd line
  mkfifo "$WALK/$name.in" "$WALK/$name.out"
  orch-standin "$kind" ${seed:+"$seed"} <"$WALK/$name.in" >"$WALK/$name.out" &
  pids+=($!)
  exec {fd}>"$WALK/$name.in"   # held open: the stand-in serves until the shell exits
  read -r line <"$WALK/$name.out"
  printf -v "url_$name" '%s' "${line#"$kind "}"
}

step "start the stand-ins (loopback only)"
start_standin plane plane "$WALK/plane-seed.yaml"
start_standin gitea gitea "$WALK/gitea-seed.yaml"
start_standin staging prod
start_standin shop_prod prod
start_standin orch_prod prod
start_standin telegram telegram
export ORCH_PLANE_URL=$url_plane ORCH_GITEA_URL=$url_gitea
export ORCH_PLANE_API_KEY=plane_api_0123456789abcdef0123456789abcdef
export ORCH_GITEA_TOKEN=gitea-standin-token
export ORCH_PLANE_WEBHOOK_SECRET=plane_wh_0123456789abcdef0123456789abcdef
# staging's receiver has a secret of its own: the deployer signs round trips with it.
export ORCH_STAGING_WEBHOOK_SECRET=plane_wh_staging0123456789abcdef0123456789
export ORCH_TELEGRAM_API_URL=$url_telegram ORCH_TELEGRAM_BOT_TOKEN=123456:standin-token ORCH_TELEGRAM_CHAT_ID=4242
# The deploy procedure the stub deployer follows: one staging, one production per project
# (each act points STUB_PROD_URL at its project's).
export STUB_STAGING_URL=$url_staging
echo "plane $url_plane, gitea $url_gitea, staging $url_staging"
echo "production: shop $url_shop_prod, orch $url_orch_prod; telegram $url_telegram"

# gitea_get PATH: a GET on the Gitea stand-in's API, as JSON.
gitea_get() { curl -fsS -H "Authorization: token $ORCH_GITEA_TOKEN" "$ORCH_GITEA_URL/api/v1/$1"; }
# post URL: a bodyless POST to a stand-in's control route; prints its answer.
post() { printf '$ curl -X POST %s\n' "$1"; curl -fsS -X POST "$1"; }
# json EXPR: evaluates a Python expression over the JSON on stdin (bound to j).
json() { python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }

step "production runs main as it is today (what a rollback goes back to)"
post "$url_shop_prod/_control/deploy?revision=$(gitea_get repos/acme/shop/branches/main | json 'j["commit"]["id"]')"
post "$url_orch_prod/_control/deploy?revision=$(gitea_get repos/acme/orch/branches/main | json 'j["commit"]["id"]')"
