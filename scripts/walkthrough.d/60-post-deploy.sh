# Post-deploy: a deploy whose production stand-in degrades is rolled back and the task
# reopened; the self-hosting repo with the same symptoms only alerts. Time moves through
# ORCH_NOW between ticks, as the timer would move it.

# pd_standin NAME KIND: starts `orch-standin KIND`, sets pd_url_NAME to its URL.
pd_standin() {
  mkfifo "$WALK/$1.in" "$WALK/$1.out"
  orch-standin "$2" < "$WALK/$1.in" > "$WALK/$1.out" &
  pids+=($!)
  exec {pd_fd}>"$WALK/$1.in"   # held open: the stand-in serves until the shell exits
  local _kind url
  read -r _kind url < "$WALK/$1.out"
  printf -v "pd_url_$1" '%s' "$url"
}
# pd_post URL PATH: a bodyless POST over bash's /dev/tcp (no curl needed).
pd_post() {
  local hp=${1#http://} host port
  host=${hp%%:*} port=${hp##*:}
  exec {pd_sock}<>"/dev/tcp/$host/$port"
  printf 'POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' "$2" "$host" >&"$pd_sock"
  local line; read -r line <&"$pd_sock"; echo "production stand-in: ${line%$'\r'} for POST $2"
  exec {pd_sock}>&-
}
pd_base=$(date -u -d 2026-11-25T03:00:00Z +%s)
pd_at() { date -u -d "@$((pd_base + $1))" +%Y-%m-%dT%H:%M:%SZ; }
pd_tick() { ORCH_NOW=$(pd_at "$1") show orch post-deploy-tick; }

step "post-deploy: a production stand-in and a Telegram stand-in on loopback"
pd_standin prod prod
pd_standin tg telegram
echo "production at $pd_url_prod, Telegram Bot API at $pd_url_tg"
pd_saved_config=$ORCH_CONFIG
ORCH_CONFIG="$WALK/post-deploy.yaml"
cat > "$ORCH_CONFIG" <<YAML
plane: { workspace: acme }
projects:
  - name: orch
    plane_project_id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02
    plane_identifier: ORCH
    repo: acme/orch
    self_hosting: true
    health_url: $pd_url_prod/health
    metrics_url: $pd_url_prod/metrics
    rollback: [/bin/sh, -c, 'echo "rolled back \$ORCH_TASK_KEY" >> "$WALK/rollbacks.log"']
  - name: shop
    plane_project_id: 3f9a1c0e-8b7d-4c2a-a1e5-6d4b2c9f0a17
    plane_identifier: SHOP
    repo: acme/shop
    health_url: $pd_url_prod/health
    metrics_url: $pd_url_prod/metrics
    rollback: [/bin/sh, -c, 'echo "rolled back \$ORCH_TASK_KEY" >> "$WALK/rollbacks.log"']
agents:
  deployer: [$root/scripts/stub-agent, deployer, "{task}", "{artefacts}"]
YAML
export ORCH_POST_DEPLOY_REPOS=shop,acme/orch
export ORCH_TELEGRAM_API_URL=$pd_url_tg ORCH_TELEGRAM_BOT_TOKEN=123456:standin-token ORCH_TELEGRAM_CHAT_ID=4242
touch "$WALK/rollbacks.log"

step "deploy -> done arms the post-deploy window (ORCH_POST_DEPLOY_REPOS=$ORCH_POST_DEPLOY_REPOS)"
export ORCH_NOW=$(pd_at 0)
orch task add --project shop --work-item 0b8f5d2e-6060-4c3a-9d2e-000000000060 --key SHOP-60 --title "Faster checkout" >/dev/null
for s in development review deploy-staging deploy; do orch task move SHOP-60 --to "$s" --reason walkthrough >/dev/null 2>&1; done
show orch task move SHOP-60 --to done --reason "deploy_status SUCCESS, PR merged"
show orch status
unset ORCH_NOW

step "ticks while production is healthy: INCONCLUSIVE until there are enough samples"
pd_post "$pd_url_prod" "/_control/traffic?code=200&count=500"
pd_tick 60

step "production degrades; three failed health probes in a row mean DEGRADED -> ROLLBACK"
pd_post "$pd_url_prod" "/_control/health?status=503"
pd_post "$pd_url_prod" "/_control/traffic?code=200&count=500"
pd_tick 120
pd_post "$pd_url_prod" "/_control/traffic?code=200&count=500"
pd_tick 180
pd_tick 240
show cat "$WALK/rollbacks.log"
show cat "$ORCH_ARTEFACTS_DIR/SHOP-60/16-post-deploy-log.md"
ORCH_NOW=$(pd_at 240) show orch task show SHOP-60

step "repeating the tick does not roll back twice (the window is closed)"
pd_tick 300
show cat "$WALK/rollbacks.log"

step "the self-hosting repo degrades too: ALERT_ONLY, its rollback never runs"
export ORCH_NOW=$(pd_at 400)
orch task add --project orch --work-item 7b1e4c2a-6060-4000-8000-000000000060 --key ORCH-60 --title "New tick" >/dev/null
for s in development review deploy-staging deploy; do orch task move ORCH-60 --to "$s" --reason walkthrough >/dev/null 2>&1; done
show orch task move ORCH-60 --to done --reason "deploy_status SUCCESS, PR merged"
unset ORCH_NOW
pd_tick 460
pd_tick 520
pd_tick 580
pd_tick 640
show cat "$WALK/rollbacks.log"

step "the window ends; the verdict goes into the log's frontmatter"
pd_tick 1400
show head -5 "$ORCH_ARTEFACTS_DIR/ORCH-60/16-post-deploy-log.md"
ORCH_NOW=$(pd_at 1400) show orch status

ORCH_CONFIG=$pd_saved_config
unset ORCH_POST_DEPLOY_REPOS ORCH_TELEGRAM_API_URL ORCH_TELEGRAM_BOT_TOKEN ORCH_TELEGRAM_CHAT_ID
