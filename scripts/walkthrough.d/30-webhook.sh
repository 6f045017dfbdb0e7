# Webhook intake: a signed Plane delivery through `webhook-handle --stdio`, exactly as the
# systemd socket hands it over, starts a task with its Gitea branch and analyst job.
export ORCH_PLANE_WEBHOOK_SECRET=plane_wh_0123456789abcdef0123456789abcdef
body="$root/tests/fixtures/plane/webhook-issue-state-started.raw-body.json"
# The reference test vector (shared/reference/plane.md 1.3): Plane's own signature.
sig=d8455c46569112e8214863e9ba46e7ac12864d3590205014aefd93950034f273
# request DELIVERY-ID SIGNATURE: one HTTP/1.1 POST of $body, as Plane sends it.
request() {
  printf 'POST /webhooks/plane HTTP/1.1\r\nHost: orch.example\r\nContent-Type: application/json\r\nUser-Agent: Autopilot\r\nX-Plane-Event: issue\r\nX-Plane-Delivery: %s\r\nX-Plane-Signature: %s\r\nContent-Length: %s\r\n\r\n' \
    "$1" "$2" "$(wc -c <"$body" | tr -d ' ')"
  cat "$body"
}

step "a signed delivery (ORCH-42 moved to In Progress) through webhook-handle --stdio"
echo '$ request 7d1c0de0-0001 $sig | orch webhook-handle --stdio'
request 7d1c0de0-0001 "$sig" | orch webhook-handle --stdio
echo
show orch task show ORCH-42

step "Plane retries with a new delivery id and the same bytes: 200, nothing done twice"
echo '$ request 7d1c0de0-0002 $sig | orch webhook-handle --stdio'
request 7d1c0de0-0002 "$sig" | orch webhook-handle --stdio
echo

step "a forged signature is refused (401) and leaves nothing behind"
echo '$ request 7d1c0de0-0003 <forged> | orch webhook-handle --stdio'
set +e
request 7d1c0de0-0003 "$(printf '%064d' 0)" | orch webhook-handle --stdio
echo " (exit $?)"
set -e

step "an operator replays the delivery by hand: one outcome line"
show orch webhook-handle --body "$body" --header "X-Plane-Signature: $sig" --header "X-Plane-Delivery: by-hand"
show orch status
