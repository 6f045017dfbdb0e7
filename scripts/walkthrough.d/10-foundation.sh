# Foundation: a database, a checked configuration, a task started by hand, the status.
cat > "$ORCH_CONFIG" <<YAML
plane: { workspace: acme }
projects:
  - name: orch
    plane_project_id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02
    plane_identifier: ORCH
    repo: acme/orch
    self_hosting: true
    states:
      approved: { names: [Approved] }
      rejected: { names: [Rejected] }
      blocked:  { names: [Blocked] }
  - name: shop
    plane_project_id: 3f9a1c0e-8b7d-4c2a-a1e5-6d4b2c9f0a17
    plane_identifier: SHOP
    repo: acme/shop
    states:
      approved: { names: [Approved] }
agents:
  analyst:   [$root/scripts/stub-agent, analyst, "{task}", "{artefacts}"]
  developer: [$root/scripts/stub-agent, developer, "{task}", "{artefacts}"]
  reviewer:  [$root/scripts/stub-agent, reviewer, "{task}", "{artefacts}"]
  deployer:  [$root/scripts/stub-agent, deployer, "{task}", "{artefacts}"]
YAML

step "create the database (twice: the second run changes nothing)"
show orch init
show orch init

step "validate the configuration (secrets would show as <redacted>)"
ORCH_GITEA_TOKEN=walkthrough-token show orch config check

step "start a task by hand, as a Plane start delivery would"
show orch task add --project shop --work-item 0b8f5d2e-1111-4c3a-9d2e-000000000001 --key SHOP-1 --title "Add a basket page"
show orch task show SHOP-1

step "a move the pipeline table does not allow is refused (exit 1)"
show_rc orch task move SHOP-1 --to deploy --reason "skip ahead"

step "the queue at a glance"
show orch status
