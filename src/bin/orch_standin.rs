//! Loopback stand-ins of Plane and Gitea for the walkthrough (test-helpers only).

fn main() {
    eprintln!("orch-standin: not built yet");
    std::process::exit(2);
}
