# Staging check: one sandbox-infrastructure failure that is waived, then one real
# failure that is not. C9a is a real webhook round trip: it resolves the shop
# project's In Progress state from the Plane stand-in and signs a synthetic delivery,
# but no staging webhook listens on its port, so it fails (and is waived).
rev=0123456789abcdef0123456789abcdef01234567
# The round trip reads Plane (the stand-in of part 20) and, to wait for the branch,
# Gitea (the merge part's stand-in, still running).
export ORCH_GITEA_URL=$GITEA_MERGE_URL ORCH_GITEA_TOKEN=gitea-standin-token
# Image freshness applies to the shop repo here (default: the self-hosting repo only).
export ORCH_IMAGE_FRESHNESS_REPOS=shop,orch
cat >> "$ORCH_CONFIG" <<YAML
staging:
  checks:
    - { id: C1, name: health, kind: command, argv: [/bin/echo, healthy], expect_output: healthy, timeout_s: 5 }
    - { id: F1, name: image revision, kind: image-freshness, argv: [/bin/echo, "$rev"], timeout_s: 5 }
    - { id: C9a, name: sandbox branch (no staging webhook), kind: webhook-roundtrip, project: shop, webhook_url: "http://127.0.0.1:9/webhooks/plane", wait_for: branch, timeout_s: 5 }
YAML

step "staging-check: C9a is allowlisted sandbox infrastructure, so its failure is waived (exit 0)"
EXPECTED_REVISION=$rev show_rc orch staging-check --task SHOP-1
show sed -n '1,/^---$/p' "$ORCH_ARTEFACTS_DIR/SHOP-1/10-staging-report.md"
echo "$ orch task show SHOP-1   (the revision staging validated, which the merge pins)"
orch task show SHOP-1 | grep -i validated || true

step "--strict turns tolerance off for one run: the same failure now fails (exit 1)"
EXPECTED_REVISION=$rev show_rc orch staging-check --strict

cat >> "$ORCH_CONFIG" <<YAML
    - { id: C2, name: migrations, kind: command, argv: [/bin/sh, -c, "echo 'migration 0042 failed' >&2; exit 1"], timeout_s: 5 }
YAML
step "a REAL failure always fails, whatever the allowlist says (exit 1); --json for CI"
EXPECTED_REVISION=$rev show_rc orch staging-check
EXPECTED_REVISION=$rev orch staging-check --json 2>/dev/null | grep -E '"(status|exit_code)"' || true
unset ORCH_GITEA_URL ORCH_GITEA_TOKEN
