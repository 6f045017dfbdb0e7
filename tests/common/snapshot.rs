//! Snapshot text of a run for `insta`: the exit status first, then stdout, with what
//! changes from run to run (the temp dir, loopback ports) replaced by fixed names.

use super::{Run, TestEnv};

/// Returns `exit: <code>` and stdout, normalised: the env's directory becomes `[HOME]`
/// and every `127.0.0.1:<port>` becomes `127.0.0.1:[PORT]`.
pub fn report(env: &TestEnv, run: &Run) -> String {
    normalise(env, &format!("exit: {}\n{}", run.code, run.stdout))
}

/// Applies [`report`]'s replacements to any text.
pub fn normalise(env: &TestEnv, text: &str) -> String {
    let home = env.dir.path().display().to_string();
    let text = text.replace(&home, "[HOME]");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    const HOST: &str = "127.0.0.1:";
    while let Some(i) = rest.find(HOST) {
        out.push_str(&rest[..i + HOST.len()]);
        rest = &rest[i + HOST.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push_str("[PORT]");
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}
