//! Integration tests: the real `orch` binary against a real SQLite file, real locks,
//! real processes and loopback stand-ins. One test binary, one module per area.

#[path = "../common/mod.rs"]
mod common;

/// This binary's engine (`tests/postgres/main.rs` runs the same modules on PostgreSQL).
pub const BACKEND: common::Backend = common::Backend::Sqlite;

mod agent_socket;
mod backup;
mod bounds;
mod clients;
mod crash;
mod doctor;
mod feedback;
mod foundation;
mod holds;
mod hosts;
mod install;
mod jobs;
mod kit;
mod leases;
mod merge_guard;
mod migrate_store;
mod package;
mod post_deploy;
mod priority;
mod prompts;
mod reconcile;
mod rounds;
mod shared_state;
mod spend;
mod staging_check;
mod staging_roundtrip;
mod stale_artefacts;
mod stale_deliveries;
mod the_loop;
mod versions;
mod webhook;
mod workspace;

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

/// Returns each public type name (`pub` or `pub(crate)` struct, enum, union, type or
/// trait) that `files` (path and text) define more than once, with where: one name, one
/// meaning, so a reader never has to ask which `Verdict` a line means. There is no
/// allow-list: every name the tree defined twice so far held different things.
fn shared_type_names(files: &[(String, String)]) -> Vec<(String, Vec<String>)> {
    let mut seen: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (path, text) in files {
        for (n, line) in text.lines().enumerate() {
            let l = line.trim_start();
            let Some(rest) = l.strip_prefix("pub(crate) ").or(l.strip_prefix("pub ")) else {
                continue;
            };
            let mut words = rest.split_whitespace();
            if !matches!(
                words.next(),
                Some("struct" | "enum" | "union" | "type" | "trait")
            ) {
                continue;
            }
            let Some(name) = words.next() else { continue };
            let name: String = name
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            seen.entry(name)
                .or_default()
                .push(format!("{path}:{}", n + 1));
        }
    }
    seen.into_iter().filter(|(_, at)| at.len() > 1).collect()
}

/// Reads every `.rs` file under `dir`, named by its path relative to `root`.
fn rust_files(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).expect("read a source directory") {
        let path = e.expect("dir entry").path();
        if path.is_dir() {
            rust_files(root, &path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&path).expect("read a source file");
            let name = path.strip_prefix(root).unwrap_or(&path);
            out.push((name.display().to_string(), text));
        }
    }
}

#[test]
fn no_two_public_types_in_src_share_a_name() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(root, &root.join("src"), &mut files);
    assert!(
        files.len() > 50,
        "read the real tree: {} files",
        files.len()
    );
    assert_eq!(
        shared_type_names(&files),
        Vec::<(String, Vec<String>)>::new(),
        "give each type the name of what it holds (issue 12): a second `Verdict` is a \
         `MergeVerdict` or a `StagingVerdict`"
    );
}

#[test]
fn a_type_name_defined_twice_is_reported() {
    let file = |p: &str, t: &str| (p.to_string(), t.to_string());
    let files = [
        file(
            "a.rs",
            "pub struct Verdict {}\npub enum Kind { A }\nstruct Local;\n",
        ),
        file(
            "b.rs",
            "/// doc\n    pub(crate) enum Verdict { X }\npub type Local = u8;\n",
        ),
        file(
            "c.rs",
            "pub trait Kind<T> {}\npub fn Verdict() {}\npub(super) struct Kind;\n",
        ),
    ];
    assert_eq!(
        shared_type_names(&files),
        [
            (
                "Kind".to_string(),
                vec!["a.rs:2".to_string(), "c.rs:1".to_string()]
            ),
            (
                "Verdict".to_string(),
                vec!["a.rs:1".to_string(), "b.rs:2".to_string()]
            ),
        ]
    );
}
