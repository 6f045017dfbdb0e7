# Foundation: the pipeline file an operator writes (projects, agents, staging checks:
# URLs and commands only; every setting stays at its default), a database, a check. It
# is the one pipeline file of the whole walkthrough: every later part reads it as is.
# C9a is a real webhook round trip for the shop sandbox, but no staging webhook listens
# on its port: it fails in every staging check and, being allowlisted sandbox
# infrastructure, is waived (the staging part shows it, and --strict).
# Agents get an allowlisted environment (docs/security.md): each is granted only the
# credentials and variables it uses; no agent ever holds the production webhook secret.
cat > "$ORCH_CONFIG" <<YAML
plane: { workspace: acme }
projects:
  - name: orch
    plane_project_id: $ORCH_PROJECT
    plane_identifier: ORCH
    repo: acme/orch
    self_hosting: true
    states:
      approved: { names: [Approved] }
      blocked:  { names: [Blocked] }
    health_url: $url_orch_prod/health
    rollback: [orch-stub-agent, rollback]
  - name: shop
    plane_project_id: $SHOP_PROJECT
    plane_identifier: SHOP
    repo: acme/shop
    states:
      approved: { names: [Approved] }
    health_url: $url_shop_prod/health
    rollback: [orch-stub-agent, rollback]
agents:
  analyst:   [orch-stub-agent, analyst]
  developer: { command: [orch-stub-agent, developer], credentials: [gitea] }
  reviewer:  [orch-stub-agent, reviewer]
  deployer:
    command: [orch-stub-agent, deployer]
    credentials: [gitea, plane, staging_webhook]
    env: [STUB_STAGING_URL, STUB_PROD_URL]
staging:
  checks:
    - { id: C1, name: health, kind: http, url: "$url_staging/health", expect_status: 200, timeout_s: 5 }
    - { id: F1, name: image, kind: image-freshness, url: "$url_staging/version", json_field: revision, timeout_s: 5 }
    - { id: C9a, name: sandbox branch (no staging webhook), kind: webhook-roundtrip, project: shop, webhook_url: "http://127.0.0.1:9/webhooks/plane", wait_for: branch, timeout_s: 5 }
YAML

step "the pipeline file: two projects, the stub agents, staging checks"
show cat "$ORCH_CONFIG"

step "create the database (twice: the second run changes nothing)"
show orch init
show orch init

step "validate the configuration (secrets show as <redacted>)"
show orch config check
