//! Integration tests: the real `orch` binary against a real SQLite file, real locks,
//! real processes and loopback stand-ins. One test binary, one module per area.

#[path = "../common/mod.rs"]
mod common;

mod clients;
mod crash;
mod foundation;
mod jobs;
mod kit;
mod merge_guard;
mod post_deploy;
mod prompts;
mod reconcile;
mod rounds;
mod staging_check;
mod staging_roundtrip;
mod stale_artefacts;
mod the_loop;
mod versions;
mod webhook;

/// Returns the `.rs` files (and module directories) of `files` that `main` does not
/// declare with a `mod` line: cargo compiles only declared modules, so such a file's
/// tests would silently never run.
fn undeclared_modules(main: &str, files: &[String]) -> Vec<String> {
    let declared: Vec<&str> = main
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mod "))
        .map(|m| m.trim_end_matches(';').trim())
        .collect();
    files
        .iter()
        .filter_map(|f| f.strip_suffix(".rs").or(Some(f.as_str())))
        .filter(|m| *m != "main" && !declared.contains(m))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_file_in_tests_integration_is_a_module() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration");
    let main = std::fs::read_to_string(dir.join("main.rs")).expect("read main.rs");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .expect("read tests/integration")
        .map(|e| e.expect("dir entry"))
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            !name.starts_with('.') && (name.ends_with(".rs") || e.path().is_dir())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.len() > 10, "read the real directory: {files:?}");
    assert_eq!(
        undeclared_modules(&main, &files),
        Vec::<String>::new(),
        "add a `mod` line to tests/integration/main.rs"
    );
}

#[test]
fn a_file_without_its_mod_line_is_reported() {
    let main = "mod common;\nmod reap;\n";
    let files = ["main.rs", "reap.rs", "rotate.rs", "helpers"].map(String::from);
    assert_eq!(undeclared_modules(main, &files), ["rotate", "helpers"]);
}
