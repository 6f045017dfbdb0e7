//! `orch-standin KIND [SEED]`: runs one loopback stand-in for the walkthrough, prints
//! `KIND URL` on stdout, and serves until stdin closes (test-helpers only).

use std::io::Read;

use orch::standin::server::Server;

/// Starts a stand-in from an optional seed file path.
type Starter = fn(Option<&str>) -> Server;

/// Every stand-in the walkthrough can start, by name.
const STANDINS: &[(&str, Starter)] = &[
    ("prod", orch::standin::prod::start_standin),
    ("telegram", orch::standin::telegram::start_standin),
];

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
