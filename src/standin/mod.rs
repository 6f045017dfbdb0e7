//! Loopback stand-ins of the services `orch` talks to, for tests and the walkthrough
//! (feature `test-helpers` only; never in a release build). Each speaks the documented
//! shapes of `shared/reference/` and can be scripted to fail.

pub mod gitea;
pub mod plane;
pub mod prod;
pub mod server;
pub mod telegram;
