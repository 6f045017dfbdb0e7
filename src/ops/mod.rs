//! The steps passes share, one floor above `core` and `adapters`: what a pass gets and
//! how it runs ([`pass`]), moving a task with all its effects ([`moves`]), gathering a
//! gate's inputs and applying it ([`gate`]), acting on a stored delivery ([`delivery`]),
//! arming post-deploy windows ([`post_deploy`]), announcing once ([`notify`]), observing
//! a job's processes ([`observe`]) and stopping its agent ([`stop`]), a job's log path and JSON shape ([`jobs`]) and
//! `staging-check`'s webhook round trip ([`roundtrip`]), its checks and reports
//! ([`staging_check`]) and the pin's reads ([`pin`]), and `merge-guard`'s reads, merge and
//! lease ([`merge`]). Code here uses `core` and `adapters`, never a command: a step two
//! commands share lives here.

pub mod delivery;
pub mod feedback;
pub mod gate;
pub mod jobs;
pub mod merge;
pub mod moves;
pub mod notify;
pub mod observe;
pub mod pass;
pub mod pin;
pub mod post_deploy;
pub mod roundtrip;
pub mod staging_check;
pub mod stop;
