//! What this binary is: the package version and the git revision `build.rs` stamped
//! (`unknown` when built outside a git checkout without `ORCH_REVISION`).

/// The package version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision built from: 12 hex digits, a packager's `ORCH_REVISION`, or `unknown`.
pub const REVISION: &str = env!("ORCH_REVISION");

/// What `orch --version` prints after the name: `0.1.0 (rev 0123456789ab)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (rev ",
    env!("ORCH_REVISION"),
    ")"
);
