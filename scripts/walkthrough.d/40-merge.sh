# Merge guard: the deployer's one way to merge, safe to run again after a re-drive.
SHOP7_HEAD=7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a
SHOP8_STAGED=8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b8b
SHOP8_HEAD=8c8c8c8c8c8c8c8c8c8c8c8c8c8c8c8c8c8c8c8c
cat > "$WALK/gitea-merge-seed.yaml" <<YAML
repos:
  - name: acme/shop
    default_branch: main
    pulls:
      - { number: 7, head: task/shop-7-basket, head_sha: $SHOP7_HEAD, title: "Add a basket page" }
      - { number: 8, head: task/shop-8-checkout, head_sha: $SHOP8_HEAD, title: "Checkout" }
YAML

step "a Gitea stand-in with two task pull requests"
mkfifo "$WALK/gitea-merge.in"
orch-standin gitea "$WALK/gitea-merge-seed.yaml" < "$WALK/gitea-merge.in" > "$WALK/gitea-merge.out" &
pids+=($!)
exec 8> "$WALK/gitea-merge.in"   # the stand-in serves until this closes
GITEA_MERGE_URL=
until [ -n "$GITEA_MERGE_URL" ]; do
  read -r _ GITEA_MERGE_URL < "$WALK/gitea-merge.out" 2>/dev/null || sleep 0.1
done
echo "gitea stand-in at $GITEA_MERGE_URL"
export ORCH_GITEA_URL=$GITEA_MERGE_URL ORCH_GITEA_TOKEN=gitea-standin-token
export ORCH_MERGE_GUARD_MERGEABLE_WAIT_S=2

# Stands in for the staging stage recording the revision it validated.
walk_sql() {
  if command -v sqlite3 >/dev/null; then sqlite3 "$ORCH_DB" "$1"
  else python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()' "$ORCH_DB" "$1"; fi
}
for n in 7 8; do
  orch task add --project shop --work-item "0b8f5d2e-4040-4c3a-9d2e-00000000000$n" --key "SHOP-$n" --title "merge walkthrough $n" >/dev/null
  for s in development review deploy-staging deploy; do
    orch task move "SHOP-$n" --to "$s" --reason "walkthrough: staged" >/dev/null
  done
done
walk_sql "UPDATE tasks SET branch='task/shop-7-basket', validated_revision='$SHOP7_HEAD' WHERE key='SHOP-7'"
walk_sql "UPDATE tasks SET branch='task/shop-8-checkout', validated_revision='$SHOP8_STAGED' WHERE key='SHOP-8'"

step "the deployer's pre-merge step: SHOP-7's PR merges once, pinned to the validated head"
show orch merge-guard --task SHOP-7 --merge

step "a re-driven deploy runs the same step: already merged, exit 0, no second merge"
show orch merge-guard --task SHOP-7 --merge
show_rc orch merge-guard --task SHOP-7

step "SHOP-8's PR moved after staging validated it: BLOCKED, nothing merged (exit 1)"
show_rc orch merge-guard --task SHOP-8 --merge
unset ORCH_GITEA_URL ORCH_GITEA_TOKEN ORCH_MERGE_GUARD_MERGEABLE_WAIT_S
exec 8>&-
