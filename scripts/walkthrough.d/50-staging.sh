# Staging check on its own (as CI would run it), with the walkthrough's one pipeline file:
# one sandbox-infrastructure failure that is waived, then one real failure that is not.
# C9a is a real webhook round trip: it resolves the shop project's In Progress state from
# the Plane stand-in and signs a synthetic delivery, but no staging webhook listens on its
# port, so it fails (and is waived). F1 compares the revision staging runs with the one
# expected: what the loop last deployed there.
rev=$(curl -fsS "$url_staging/version" | json 'j["revision"]')

step "staging-check: C9a is allowlisted sandbox infrastructure, so its failure is waived (exit 0)"
EXPECTED_REVISION=$rev show_rc orch staging-check

step "--strict turns tolerance off for one run: the same failure now fails (exit 1)"
EXPECTED_REVISION=$rev show_rc orch staging-check --strict

step "staging's health fails: a REAL failure always fails, whatever the allowlist says (exit 1); --json for CI"
post "$url_staging/_control/health?status=503"
EXPECTED_REVISION=$rev show_rc orch staging-check
EXPECTED_REVISION=$rev orch staging-check --json 2>/dev/null | grep -E '"(status|exit_code)"' || true
post "$url_staging/_control/health?status=200"
