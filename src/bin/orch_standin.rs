//! `orch-standin KIND [SEED]`: runs one loopback stand-in for the walkthrough, prints
//! `KIND URL` on stdout, and serves until stdin closes (test-helpers only).

use std::io::Read;

use orch::standin::gitea::{GiteaSeed, GiteaStandin};
use orch::standin::plane::{PlaneSeed, PlaneStandin};
use orch::standin::server::Server;

/// Starts a stand-in from an optional seed file path.
type Starter = fn(Option<&str>) -> Server;

/// Every stand-in the walkthrough can start, by name.
const STANDINS: &[(&str, Starter)] = &[
    ("plane", start_plane),
    ("gitea", start_gitea),
    ("prod", orch::standin::prod::start_standin),
    ("telegram", orch::standin::telegram::start_standin),
];

/// Reads a YAML (or JSON) seed file, or exits 2 naming the file and the problem.
fn read_seed<T: serde::de::DeserializeOwned>(kind: &str, path: Option<&str>, empty: &str) -> T {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).unwrap_or_else(|e| {
            eprintln!("error: {kind} seed {p}: {e}");
            std::process::exit(2);
        }),
        None => empty.to_string(),
    };
    serde_yaml::from_str(&text).unwrap_or_else(|e| {
        eprintln!("error: {kind} seed {}: {e}", path.unwrap_or("(none)"));
        std::process::exit(2);
    })
}

/// Plane: `workspace`, `api_key`, `rate_limit {per_minute, enforce}`, `projects[]`
/// with `id`, `states[] {id, name, group}`, `work_items[] {id, sequence_id, name, state}`.
fn start_plane(seed: Option<&str>) -> Server {
    let seed: PlaneSeed = read_seed("plane", seed, "workspace: acme\n");
    PlaneStandin::from_seed(&seed).into_server()
}

/// Gitea: `token`, `version` ("1.25", "1.24", "1.16"), `repos[]` with `name`,
/// `default_branch`, `branches {name: sha}`, `pulls[] {number, head, head_sha, base,
/// mergeable, merged, closed, title}`, `statuses[] {sha, context, state}`, `archived`,
/// `public`, `delete_branch_after_merge`.
fn start_gitea(seed: Option<&str>) -> Server {
    let seed: GiteaSeed = read_seed("gitea", seed, "repos: []\n");
    GiteaStandin::from_seed(&seed).into_server()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kind = args.first().map(String::as_str).unwrap_or("");
    let Some((_, start)) = STANDINS.iter().find(|(name, _)| *name == kind) else {
        let names: Vec<&str> = STANDINS.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "usage: orch-standin KIND [SEED]; KIND is one of: {}",
            names.join(", ")
        );
        std::process::exit(2);
    };
    let server = start(args.get(1).map(String::as_str));
    println!("{kind} {}", server.url());
    // Serve until the walkthrough closes our stdin (or dies).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}
