# Staging check on its own (as CI would run it): one sandbox-infrastructure failure that
# is waived, then one real failure that is not. C9a is a real webhook round trip: it
# resolves the shop project's In Progress state from the Plane stand-in and signs a
# synthetic delivery, but no staging webhook listens on its port, so it fails (and is
# waived). This part reads its own pipeline file: the loop's stays as it was.
rev=0123456789abcdef0123456789abcdef01234567
staging_config="$WALK/staging-demo.yaml"
sed '/^staging:/,$d' "$ORCH_CONFIG" > "$staging_config"
cat >> "$staging_config" <<YAML
staging:
  checks:
    - { id: C1, name: health, kind: command, argv: [/bin/echo, healthy], expect_output: healthy, timeout_s: 5 }
    - { id: F1, name: image revision, kind: image-freshness, project: orch, argv: [/bin/echo, "$rev"], timeout_s: 5 }
    - { id: C9a, name: sandbox branch (no staging webhook), kind: webhook-roundtrip, project: shop, webhook_url: "http://127.0.0.1:9/webhooks/plane", wait_for: branch, timeout_s: 5 }
YAML

step "staging-check: C9a is allowlisted sandbox infrastructure, so its failure is waived (exit 0)"
ORCH_CONFIG=$staging_config EXPECTED_REVISION=$rev show_rc orch staging-check

step "--strict turns tolerance off for one run: the same failure now fails (exit 1)"
ORCH_CONFIG=$staging_config EXPECTED_REVISION=$rev show_rc orch staging-check --strict

cat >> "$staging_config" <<YAML
    - { id: C2, name: migrations, kind: command, argv: [/bin/sh, -c, "echo 'migration 0042 failed' >&2; exit 1"], timeout_s: 5 }
YAML
step "a REAL failure always fails, whatever the allowlist says (exit 1); --json for CI"
ORCH_CONFIG=$staging_config EXPECTED_REVISION=$rev show_rc orch staging-check
ORCH_CONFIG=$staging_config EXPECTED_REVISION=$rev orch staging-check --json 2>/dev/null | grep -E '"(status|exit_code)"' || true
