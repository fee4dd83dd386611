//! The shape of `src/`, checked: each layer imports only the layers below
//! it, and no file grows past 700 lines. A newcomer can then read the
//! layers bottom-up, each without the ones above.

use std::path::{Path, PathBuf};

/// The layers, bottom to top (see `src/lib.rs`).
const LAYERS: &[(&str, u8)] = &[
    ("clock", 0),
    ("record", 0),
    ("topic", 0),
    ("units", 0),
    ("net", 0),
    ("files", 0),
    ("throttle", 0),
    ("recent", 0),
    ("access", 0),
    ("config", 1),
    ("pki", 1),
    ("store", 2),
    ("route", 2),
    ("stats", 2),
    ("source", 3),
    ("sink", 4),
    ("control", 5),
    ("daemon", 6),
];

fn rank(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// (file, top-level module of the file, every `crate::X::...` it names).
fn imports() -> Vec<(String, String, Vec<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .map(|path| {
            let rel = path
                .strip_prefix(&src)
                .expect("under src")
                .to_string_lossy()
                .into_owned();
            let top = rel
                .split('/')
                .next()
                .unwrap_or_default()
                .trim_end_matches(".rs")
                .to_string();
            let text = std::fs::read_to_string(&path).expect("read");
            let named = text
                .match_indices("crate::")
                .map(|(i, _)| {
                    text[i + 7..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                        .collect::<String>()
                })
                .collect();
            (rel, top, named)
        })
        .collect()
}

#[test]
fn no_module_imports_a_layer_above_it() {
    let mut wrong = Vec::new();
    for (file, top, named) in imports() {
        // The binaries sit above every layer.
        let Some(own) = rank(&top) else { continue };
        for path in named {
            let target = path.split("::").next().unwrap_or_default();
            if rank(target).is_some_and(|r| r > own) {
                wrong.push(format!("{file} imports crate::{path}"));
            }
            if top == "sink" && path.starts_with("source::serial") {
                wrong.push(format!("{file} reaches into crate::{path}"));
            }
        }
    }
    assert!(wrong.is_empty(), "upward imports:\n{}", wrong.join("\n"));
}

#[test]
fn every_top_level_module_has_a_layer() {
    for (file, top, _) in imports() {
        assert!(
            rank(&top).is_some() || ["main", "lib", "bin"].contains(&top.as_str()),
            "{file}: module `{top}` is in no layer (add it to LAYERS and to src/lib.rs)"
        );
    }
}

#[test]
fn no_source_file_is_longer_than_700_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|p| {
            let n = std::fs::read_to_string(p).expect("read").lines().count();
            (n > 700).then(|| format!("{}: {n} lines", p.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these by job:\n{}", long.join("\n"));
}
