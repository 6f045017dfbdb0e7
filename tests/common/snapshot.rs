//! Snapshot text of a run for `insta`: the exit status first, then stdout, with what
//! changes from run to run (the temp dir, loopback ports, millisecond timings) replaced
//! by fixed names.

use super::{Run, TestEnv};

/// Returns `exit: <code>` and stdout, normalised: the env's directory becomes `[HOME]`,
/// every `127.0.0.1:<port>` becomes `127.0.0.1:[PORT]` and a padded timing such as
/// `   12ms` becomes ` [ms]`.
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
    out.lines()
        .map(without_timings)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Replaces each run of spaces, digits and `ms` (a measured duration, right-aligned in
/// a column) by ` [ms]`.
fn without_timings(line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let mut out: Vec<&str> = Vec::new();
    for w in words {
        let is_timing = w.len() > 2
            && w.ends_with("ms")
            && w[..w.len() - 2].bytes().all(|b| b.is_ascii_digit());
        if is_timing {
            while out.last() == Some(&"") {
                out.pop();
            }
            out.push("[ms]");
        } else {
            out.push(w);
        }
    }
    out.join(" ")
}
