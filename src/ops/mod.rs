//! The steps passes share: what a pass gets and how it runs ([`pass`]), moving a task
//! with all its effects ([`moves`]), gathering a gate's inputs and applying it
//! ([`gate`]), announcing once ([`notify`]) and `staging-check`'s webhook round trip
//! ([`roundtrip`]). They use `core` and `adapters`, never a command.

pub mod gate;
pub mod moves;
pub mod notify;
pub mod pass;
pub mod roundtrip;
