//! Configuration: `ORCH_*` settings and the YAML pipeline file, validated into [`Config`].

mod load;

pub use load::*;
