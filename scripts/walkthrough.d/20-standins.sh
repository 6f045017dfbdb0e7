# Stand-ins: loopback Plane and Gitea models, seeded from files, for the parts that
# follow. Each serves until its stdin (a fifo we hold open) closes or cleanup kills it;
# its first stdout line is "KIND URL", read through a fifo (an event, not a sleep).
cat > "$WALK/plane-seed.yaml" <<'YAML'
workspace: acme
projects:
  - id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02
    states:
      - { id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb1, name: Backlog, group: backlog }
      - { id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb2, name: Todo, group: unstarted }
      - { id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb3, name: In Progress, group: started }
      - { id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb6, name: Approved, group: started }
      - { id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb7, name: Rejected, group: started }
      - { id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb8, name: Blocked, group: started }
      - { id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb4, name: Done, group: completed }
      - { id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb5, name: Cancelled, group: cancelled }
    work_items:
      - { id: 7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e04, sequence_id: 42, name: Fix crash saving settings, state: Todo }
  - id: 3f9a1c0e-8b7d-4c2a-a1e5-6d4b2c9f0a17
    states:
      - { id: 3f9a1c0e-8b7d-4c2a-a1e5-000000000b01, name: Todo, group: unstarted }
      - { id: 3f9a1c0e-8b7d-4c2a-a1e5-000000000b02, name: In Progress, group: started }
      - { id: 3f9a1c0e-8b7d-4c2a-a1e5-000000000b03, name: Approved, group: started }
      - { id: 3f9a1c0e-8b7d-4c2a-a1e5-000000000b04, name: Done, group: completed }
    work_items:
      - { id: 0b8f5d2e-1111-4c3a-9d2e-000000000001, sequence_id: 1, name: Add a basket page, state: In Progress }
YAML
cat > "$WALK/gitea-seed.yaml" <<'YAML'
repos:
  - name: acme/orch
  - name: acme/shop
YAML

# start_standin KIND SEED VAR: runs orch-standin and sets VAR to its URL.
start_standin() {
  local kind=$1 seed=$2 var=$3 in="$WALK/$1.in" out="$WALK/$1.out" line
  mkfifo "$in" "$out"
  orch-standin "$kind" "$seed" <"$in" >"$out" &
  pids+=($!)
  # Hold the stdin fifo open for the rest of the walkthrough (fd per kind).
  case $kind in plane) exec 7>"$in" ;; gitea) exec 8>"$in" ;; esac
  read -r line <"$out"
  printf -v "$var" '%s' "${line#"$kind "}"
  export "${var?}"
}

step "start the Plane and Gitea stand-ins (loopback only)"
start_standin plane "$WALK/plane-seed.yaml" ORCH_PLANE_URL
start_standin gitea "$WALK/gitea-seed.yaml" ORCH_GITEA_URL
export ORCH_PLANE_API_KEY=plane_api_0123456789abcdef0123456789abcdef
export ORCH_GITEA_TOKEN=gitea-standin-token
echo "plane stand-in at $ORCH_PLANE_URL, gitea stand-in at $ORCH_GITEA_URL"
