//! Lints as tests (STYLE §10): formatting, banned APIs, module docs, line length and the
//! direction of dependencies between workspace crates. Clippy runs in `.ci/run` before the
//! tests, with the same `-D warnings`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tools/ has a parent")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == "fuzz" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn library_sources() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = Vec::new();
    for krate in ["engine", "cluster", "net"] {
        rust_files(&root.join(krate).join("src"), &mut files);
    }
    files
}

fn all_sources() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = Vec::new();
    for krate in ["engine", "cluster", "net", "tools", "perf", "benches"] {
        rust_files(&root.join(krate), &mut files);
    }
    files
}

/// Text of a file with `#[cfg(test)]` modules cut off (they sit at the end by convention).
fn non_test_text(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("source readable");
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

// Goal: the tree is rustfmt-clean. Method: run `cargo fmt --check` (no build needed).
#[test]
fn formatted() {
    let status = Command::new(env!("CARGO"))
        .args(["fmt", "--all", "--", "--check"])
        .current_dir(workspace_root())
        .status()
        .expect("cargo fmt runs");
    assert!(status.success(), "run `cargo fmt --all`");
}

// Goal: library code uses only the runtime facade, reads time only through rt::clock, and
// contains no debugging leftovers. Method: scan non-test library source text.
#[test]
fn banned_apis() {
    let mut problems = Vec::new();
    for path in library_sources() {
        let shown = path
            .strip_prefix(workspace_root())
            .expect("inside root")
            .display()
            .to_string();
        let text = non_test_text(&path);
        let in_rt = shown.starts_with("engine/src/rt/");
        let checks: &[(&str, bool)] = &[
            ("glommio::", !in_rt),
            ("Instant::now", !shown.ends_with("rt/clock.rs")),
            ("SystemTime::now", !shown.ends_with("rt/clock.rs")),
            ("thread::sleep", true),
            ("dbg!(", true),
            ("todo!(", true),
            ("unimplemented!(", true),
            ("println!(", true),
        ];
        for (needle, banned) in checks {
            if *banned && text.contains(needle) {
                problems.push(format!("{shown}: uses {needle}"));
            }
        }
    }
    assert!(problems.is_empty(), "banned APIs:\n{}", problems.join("\n"));
}

// Goal: every library module says what it is for. Method: each file starts with `//!`.
#[test]
fn module_docs() {
    let missing: Vec<String> = library_sources()
        .into_iter()
        .filter(|p| {
            !std::fs::read_to_string(p)
                .expect("readable")
                .starts_with("//!")
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! module doc:\n{}",
        missing.join("\n")
    );
}

// Goal: lines stay within 100 columns (rustfmt does not wrap strings and comments).
#[test]
fn line_length() {
    let mut long = Vec::new();
    for path in all_sources() {
        let text = std::fs::read_to_string(&path).expect("readable");
        for (i, line) in text.lines().enumerate() {
            if line.chars().count() > 100 {
                long.push(format!("{}:{}", path.display(), i + 1));
            }
        }
    }
    assert!(
        long.is_empty(),
        "lines over 100 columns:\n{}",
        long.join("\n")
    );
}

// Goal: workspace dependencies run one way: tools/perf → net → cluster → engine.
// Method: read each crate's [dependencies] table.
#[test]
fn dependency_direction() {
    let allowed: &[(&str, &[&str])] = &[
        ("engine", &[]),
        ("cluster", &["sluice-engine"]),
        ("net", &["sluice-engine", "sluice-cluster"]),
        ("perf", &["sluice-engine", "sluice-net"]),
        (
            "benches",
            &["sluice-engine", "sluice-net", "sluice-cluster"],
        ),
        ("tools", &["sluice-engine", "sluice-cluster", "sluice-net"]),
    ];
    for (krate, deps) in allowed {
        let manifest = std::fs::read_to_string(workspace_root().join(krate).join("Cargo.toml"))
            .expect("manifest readable");
        let dependencies = manifest
            .split("[dependencies]")
            .nth(1)
            .map(|rest| rest.split("\n[").next().unwrap_or(""))
            .unwrap_or("");
        for line in dependencies.lines() {
            let name = line.split(['.', '=', ' ']).next().unwrap_or("").trim();
            if name.starts_with("sluice-") {
                assert!(deps.contains(&name), "{krate} must not depend on {name}");
            }
        }
    }
}
