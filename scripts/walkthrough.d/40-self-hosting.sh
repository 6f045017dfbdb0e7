# --- Act 2: the self-hosting repository, orch ------------------------------------------
# The same loop for the repo that runs the pipeline itself: staging is checked for image
# freshness (the revision staging reports must be the PR head, and that revision is what
# the merge pins), and a degraded production only alerts: a tick never restarts orch.
# On the way, the approval's webhook is lost and the reconcile timer replays it from Plane.
export STUB_PROD_URL=$url_orch_prod
ORCH_IN_PROGRESS=7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb3
ORCH_APPROVED=7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb6

step "a human moves ORCH-42 to In Progress in Plane; Plane sends a signed delivery"
advance 60
plane_move "$ORCH_PROJECT" "$ORCH_ITEM" "$ORCH_IN_PROGRESS"
deliver "$ORCH_PROJECT" "$ORCH_ITEM" 42 "Fix crash saving settings" "$ORCH_IN_PROGRESS" "In Progress" started d-0101
expect_stage ORCH-42 analysis

step "dispatch starts the analyst"
run_job
expect_stage ORCH-42 analysis

step "the human approves ORCH-42 in Plane, but the webhook is lost (nothing reaches orch)"
plane_move "$ORCH_PROJECT" "$ORCH_ITEM" "$ORCH_APPROVED"
expect_stage ORCH-42 analysis

step "the reconcile timer sees Plane says Approved and replays it"
advance 301
show orch reconcile
expect_stage ORCH-42 development

round ORCH-42 acme/orch 1
echo "=> ORCH-42's validated revision (what staging ran, what the merge pinned): $(task_field ORCH-42 validated_revision)"

step "production degrades: DEGRADED, but for the self-hosting repo ALERT_ONLY (no rollback)"
post "$url_orch_prod/_control/health?status=503"
for _ in 1 2 3 4; do
  advance 60
  show orch post-deploy-tick
done
show sed -n '1,/^---$/{/^---$/!p}' "$ORCH_ARTEFACTS_DIR/ORCH-42/16-post-deploy-log.md"
printf '$ curl %s/version   (still the merged main: nothing rolled back)\n' "$url_orch_prod"
curl -fsS "$url_orch_prod/version"; echo
expect_stage ORCH-42 done
post "$url_orch_prod/_control/health?status=200"

step "the queue at a glance"
show orch status
