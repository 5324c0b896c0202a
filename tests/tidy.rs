//! Tidy checks of the workspace's shape, run by `cargo test`:
//!
//! - the crates depend only downward: proto < transport < shm < task <
//!   thread < process < processional (read from `cargo metadata`);
//! - processional-task uses only proto (and shm behind its `shm` feature),
//!   and processional-thread only task, of our crates;
//! - processional-proto has no I/O dependency;
//! - every library denies `unsafe_op_in_unsafe_fn`;
//! - every `unsafe` block has a `// SAFETY:` comment right above it;
//! - no call of the `todo`, `unimplemented` or `dbg` macros is left in `crates/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// The layers, bottom-up. A crate may depend only on crates of a lower rank.
/// thread and process share a level conceptually, but process may use thread
/// and never the reverse, so they get distinct ranks.
const LAYERS: &[(&str, u32)] = &[
    ("processional-proto", 0),
    ("processional-transport", 1),
    ("processional-shm", 2),
    ("processional-task", 3),
    ("processional-thread", 4),
    ("processional-process", 5),
    ("processional", 6),
];

/// Crates whose dependencies on our crates are listed exactly, beyond the
/// ranks: `(crate, [(dependency, optional only)])`. The tasks must not drag
/// sockets or shared memory into every runtime, and threads need nothing but
/// the tasks.
const LEAN: &[(&str, &[(&str, bool)])] = &[
    (
        "processional-task",
        &[("processional-proto", false), ("processional-shm", true)],
    ),
    ("processional-thread", &[("processional-task", false)]),
];

/// The only crates processional-proto may depend on: pure data crates.
const PROTO_ALLOWED: &[&str] = &["serde", "serde_bytes", "postcard", "thiserror"];

/// The directories whose Rust files the source checks read.
const SOURCE_ROOTS: &[&str] = &["crates", "benches", "tests", "xtask"];

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
}

/// `cargo metadata --no-deps` of the workspace, run once.
fn metadata() -> &'static Value {
    static METADATA: OnceLock<Value> = OnceLock::new();
    METADATA.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(&cargo)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(workspace_root())
            .output()
            .unwrap_or_else(|error| panic!("could not run {cargo:?} metadata: {error}"));
        assert!(
            output.status.success(),
            "`cargo metadata` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("`cargo metadata` prints JSON")
    })
}

fn packages() -> &'static [Value] {
    metadata()["packages"]
        .as_array()
        .expect("cargo metadata lists packages")
}

fn name(package: &Value) -> &str {
    package["name"].as_str().expect("packages have a name")
}

fn manifest_path(package: &Value) -> PathBuf {
    PathBuf::from(
        package["manifest_path"]
            .as_str()
            .expect("packages have a manifest path"),
    )
}

/// The dependencies a build of `package` uses: normal and build ones.
fn build_dependencies(package: &Value) -> impl Iterator<Item = &str> {
    build_dependency_entries(package).map(|dependency| {
        dependency["name"]
            .as_str()
            .expect("dependencies have a name")
    })
}

/// The `cargo metadata` entries of the normal and build dependencies of
/// `package`.
fn build_dependency_entries(package: &Value) -> impl Iterator<Item = &Value> {
    package["dependencies"]
        .as_array()
        .expect("packages list dependencies")
        .iter()
        .filter(|dependency| dependency["kind"].is_null() || dependency["kind"] == "build")
}

fn rank(crate_name: &str) -> Option<u32> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == crate_name)
        .map(|(_, rank)| *rank)
}

fn fail_with(title: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{title}:\n  - {}\n",
        problems.join("\n  - ")
    );
}

#[test]
fn crates_depend_only_on_lower_layers() {
    let order = LAYERS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(" < ");
    let crates_dir = workspace_root().join("crates");
    let workspace: Vec<&str> = packages().iter().map(name).collect();
    let mut problems = Vec::new();
    for package in packages() {
        let package_name = name(package);
        let Some(package_rank) = rank(package_name) else {
            if manifest_path(package).starts_with(&crates_dir) {
                problems.push(format!(
                    "{package_name} lives in crates/ but has no layer: add it to LAYERS in \
                     tests/tidy.rs (and to the layer list of docs/ARCHITECTURE.md)"
                ));
            }
            continue;
        };
        for dependency in build_dependencies(package) {
            match rank(dependency) {
                Some(dependency_rank) if dependency_rank >= package_rank => {
                    problems.push(format!(
                        "{package_name} depends on {dependency}, which is not below it \
                         (order: {order}); move the shared code down to a lower crate \
                         instead of depending upward"
                    ));
                }
                None if workspace.contains(&dependency) => problems.push(format!(
                    "{package_name} depends on the workspace package {dependency}, which is \
                     not a library layer; libraries must not depend on tests, benches or xtask"
                )),
                _ => {}
            }
        }
    }
    fail_with("the layering is broken", &problems);
}

#[test]
fn task_and_thread_use_only_their_listed_crates() {
    let mut problems = Vec::new();
    for (crate_name, allowed) in LEAN {
        let package = packages()
            .iter()
            .find(|package| name(package) == *crate_name)
            .unwrap_or_else(|| panic!("{crate_name} is a workspace member"));
        for dependency in build_dependency_entries(package) {
            let dependency_name = dependency["name"]
                .as_str()
                .expect("dependencies have a name");
            if rank(dependency_name).is_none() {
                continue; // Not one of our crates.
            }
            let optional = dependency["optional"].as_bool().unwrap_or(false);
            let names: Vec<&str> = allowed.iter().map(|(name, _)| *name).collect();
            match allowed.iter().find(|(name, _)| *name == dependency_name) {
                None => problems.push(format!(
                    "{crate_name} depends on {dependency_name}, but of our crates it may use \
                     only {names:?}: a thread-only program must not compile sockets or \
                     shared memory; move what it needs down into one of those, or update \
                     LEAN in tests/tidy.rs and the layering in docs/ARCHITECTURE.md"
                )),
                Some((_, true)) if !optional => problems.push(format!(
                    "{crate_name} depends on {dependency_name} unconditionally; it may only \
                     do so behind a feature (`optional = true`)"
                )),
                Some(_) => {}
            }
        }
    }
    fail_with(
        "a lean crate depends on more of ours than it may",
        &problems,
    );
}

#[test]
fn proto_has_no_io_dependency() {
    let proto = packages()
        .iter()
        .find(|package| name(package) == "processional-proto")
        .expect("processional-proto is a workspace member");
    let problems: Vec<String> = build_dependencies(proto)
        .filter(|dependency| !PROTO_ALLOWED.contains(dependency))
        .map(|dependency| {
            format!(
                "processional-proto depends on `{dependency}`, but proto does no I/O and may \
                 only use {PROTO_ALLOWED:?}; move the code needing `{dependency}` to \
                 processional-transport, or, if `{dependency}` is pure data handling, add it to \
                 PROTO_ALLOWED in tests/tidy.rs"
            )
        })
        .collect();
    fail_with("processional-proto must stay free of I/O", &problems);
}

#[test]
fn libraries_deny_unsafe_op_in_unsafe_fn() {
    let root_manifest = read(&workspace_root().join("Cargo.toml"));
    let workspace_denies = root_manifest.lines().any(|line| {
        let line = line.replace(' ', "");
        line.starts_with("unsafe_op_in_unsafe_fn=")
            && (line.contains("\"deny\"") || line.contains("\"forbid\""))
    });
    let mut problems = Vec::new();
    for package in packages() {
        let Some(lib) = package["targets"]
            .as_array()
            .expect("packages list targets")
            .iter()
            .find(|target| {
                target["kind"].as_array().is_some_and(|kinds| {
                    kinds
                        .iter()
                        .any(|kind| kind == "lib" || kind == "proc-macro")
                })
            })
        else {
            continue;
        };
        let manifest = read(&manifest_path(package));
        let lib_path = PathBuf::from(lib["src_path"].as_str().expect("targets have a path"));
        let lib_source = read(&lib_path);
        let denies_itself = lib_source.lines().any(|line| {
            let line = line.replace(' ', "");
            (line.starts_with("#![deny(") || line.starts_with("#![forbid("))
                && line.contains("unsafe_op_in_unsafe_fn")
        });
        if !(denies_itself || workspace_denies && inherits_workspace_lints(&manifest)) {
            problems.push(format!(
                "{} does not deny unsafe_op_in_unsafe_fn: add a `[lints]` table with \
                 `workspace = true` to {} (the workspace lints deny it{}) or \
                 `#![deny(unsafe_op_in_unsafe_fn)]` to {}",
                name(package),
                relative(&manifest_path(package)),
                if workspace_denies {
                    ""
                } else {
                    ", once [workspace.lints.rust] has `unsafe_op_in_unsafe_fn = \"deny\"`"
                },
                relative(&lib_path),
            ));
        }
    }
    fail_with("every library must deny unsafe_op_in_unsafe_fn", &problems);
}

/// Whether a manifest has `[lints]` with `workspace = true` (or the dotted
/// `lints.workspace = true`).
fn inherits_workspace_lints(manifest: &str) -> bool {
    let mut in_lints = false;
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or_default().replace(' ', "");
        if line.starts_with('[') {
            in_lints = line == "[lints]";
        } else if line == "lints.workspace=true" || in_lints && line == "workspace=true" {
            return true;
        }
    }
    false
}

#[test]
fn unsafe_blocks_have_safety_comments() {
    let mut problems = Vec::new();
    for file in rust_files(SOURCE_ROOTS) {
        if file.ends_with("tests/tidy.rs") {
            continue; // Names the patterns it looks for.
        }
        for line in unsafe_blocks_without_safety(&read(&file)) {
            problems.push(format!(
                "{}:{line}: `unsafe` block without a `// SAFETY:` comment right above it \
                 (at most 3 lines up); state why each obligation of the unsafe call holds",
                relative(&file)
            ));
        }
    }
    fail_with("undocumented unsafe blocks", &problems);
}

/// The 1-based line numbers of `unsafe {` blocks in `source` that no
/// `// SAFETY:` comment covers: the nearest comment block above, within 3
/// lines of code and with no other unsafe block between, must contain
/// `SAFETY:` (or the line itself does).
fn unsafe_blocks_without_safety(source: &str) -> Vec<usize> {
    let lines: Vec<&str> = source.lines().collect();
    let mut missing = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if !has_unsafe_block(line) {
            continue;
        }
        if line.contains("SAFETY:") {
            continue;
        }
        let mut code_lines = 0;
        let mut above = index;
        let mut covered = false;
        while above > 0 && code_lines < 3 {
            above -= 1;
            if is_comment(lines[above]) {
                // The nearest comment block decides.
                while above > 0 && is_comment(lines[above]) && !lines[above].contains("SAFETY:") {
                    above -= 1;
                }
                covered = is_comment(lines[above]) && lines[above].contains("SAFETY:");
                break;
            }
            if has_unsafe_block(lines[above]) {
                break; // A comment above that block is about that block.
            }
            code_lines += 1;
        }
        if !covered {
            missing.push(index + 1);
        }
    }
    missing
}

fn has_unsafe_block(line: &str) -> bool {
    let code = code_part(line);
    code.contains("unsafe {") || code.contains("unsafe{")
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with("//")
}

/// The part of a line before any `//` comment (string contents are not
/// parsed; the patterns searched for do not occur in our strings).
fn code_part(line: &str) -> &str {
    line.find("//").map_or(line, |comment| &line[..comment])
}

#[test]
fn no_placeholders_in_crates() {
    let mut problems = Vec::new();
    for file in rust_files(&["crates"]) {
        for (line, found) in placeholders(&read(&file)) {
            problems.push(format!(
                "{}:{line}: `{found}` left in the code; finish it (return a typed error for \
                 what cannot happen yet) or remove the debugging output",
                relative(&file)
            ));
        }
    }
    fail_with("placeholders in crates/", &problems);
}

/// The placeholder macro calls, spelled in pieces so that this file does not
/// contain them itself.
const TODO: &str = concat!("todo", "!(");
const UNIMPLEMENTED: &str = concat!("unimplemented", "!(");
const DBG: &str = concat!("dbg", "!(");

/// `(line, macro)` of each call of the `todo`, `unimplemented` and `dbg`
/// macros outside comments.
fn placeholders(source: &str) -> Vec<(usize, &'static str)> {
    const MACROS: &[&str] = &[TODO, UNIMPLEMENTED, DBG];
    let mut found = Vec::new();
    for (index, line) in source.lines().enumerate() {
        let code = code_part(line);
        for name in MACROS {
            let mut rest = code;
            while let Some(at) = rest.find(name) {
                // `dbg!(` inside `my_dbg!(` is another macro.
                let before = rest[..at].chars().next_back();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    found.push((index + 1, *name));
                }
                rest = &rest[at + name.len()..];
            }
        }
    }
    found
}

/// Every `.rs` file under the given workspace directories, skipping build
/// output and hidden directories.
fn rust_files(roots: &[&str]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending: Vec<PathBuf> = roots
        .iter()
        .map(|root| workspace_root().join(root))
        .collect();
    while let Some(directory) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries {
            let entry = entry.expect("readable directory entry");
            let path = entry.path();
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            let file_type = entry.file_type().expect("file type");
            if file_type.is_dir() {
                if file_name != "target" && !file_name.starts_with('.') {
                    pending.push(path);
                }
            } else if file_type.is_file() && file_name.ends_with(".rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("could not read {}: {error}", path.display()))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

// The checks above pass on a tidy workspace; these show they also fail.

#[test]
fn safety_scan_flags_only_uncommented_blocks() {
    let source = "\
fn a() {
    // SAFETY: documented.
    unsafe { f() };
    let x = 1;
    unsafe { g() };
    // SAFETY: a long comment
    // spanning lines
    // and more lines.
    let y = h(
        unsafe { i() },
    );
    // An unrelated comment.
    unsafe { j() };
    // unsafe { in a comment }
    let z = unsafe { k() }; // SAFETY: same line.
}
";
    assert_eq!(unsafe_blocks_without_safety(source), [5, 13]);
    assert_eq!(unsafe_blocks_without_safety("unsafe {}\n"), [1]);
}

#[test]
fn placeholder_scan_finds_macros_outside_comments() {
    let source = format!(
        "let a = {TODO});\n// {TODO}) in a comment is fine\nlet b = my_{DBG}x); let c = {DBG}y);\n{UNIMPLEMENTED}\"later\")\n"
    );
    assert_eq!(
        placeholders(&source),
        [(1, TODO), (3, DBG), (4, UNIMPLEMENTED)]
    );
}

#[test]
fn lints_inheritance_is_read_from_the_manifest() {
    assert!(inherits_workspace_lints(
        "[package]\nname = \"x\"\n\n[lints]\nworkspace = true\n"
    ));
    assert!(inherits_workspace_lints(
        "[package]\nlints.workspace = true\n"
    ));
    assert!(!inherits_workspace_lints(
        "[lints]\n[dependencies]\nworkspace = true\n"
    ));
    assert!(!inherits_workspace_lints(
        "[lints.rust]\nworkspace = true\n"
    ));
}
