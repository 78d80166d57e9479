//! The code's shape, checked: the top-level modules of `src/` depend on each other one way
//! only (no import circle), no source file outside tests grows past 600 lines, and unsafe code
//! is denied except in the few files that say why they need it.
//!
//! A module depends on another when any of its files names `crate::<other>` (in a `use` or a
//! path). Reading the text is enough: herald names other modules only that way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of the library belongs to (`src/bus/redis/mod.rs` -> `bus`);
/// `None` for the crate root and the binaries.
fn module_of(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src()).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?.to_owned();
    match first.as_str() {
        "lib.rs" | "main.rs" | "bin" => None,
        _ => Some(first.trim_end_matches(".rs").to_owned()),
    }
}

/// The code of a file without its `#[cfg(test)]` tail: tests may reach anywhere.
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |at| &text[..at])
}

/// The top-level modules `text` names as `crate::<module>`, also inside `use crate::{a, b}`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            // Nested braces close early; the first names are what matter here.
            for part in inner.split(',') {
                let name: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&file) else { continue };
        let text = std::fs::read_to_string(&file).unwrap();
        let named = named_modules(without_tests(&text));
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(named.into_iter().filter(|m| *m != module));
    }
    graph
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_checker_sees_names_and_circles() {
    let named = named_modules("use crate::bus::Bus;\nuse crate::{config::Config, metrics};\nlet x = crate::clock::unix_ms();");
    assert_eq!(named.into_iter().collect::<Vec<_>>(), ["bus", "clock", "config", "metrics"]);
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", "b"), ("b", "c"), ("c", "a")].into_iter().map(|(from, to)| (from.to_owned(), BTreeSet::from([to.to_owned()]))).collect();
    assert_eq!(find_cycle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let mut acyclic = graph.clone();
    acyclic.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&acyclic), None);
}

#[test]
fn src_modules_depend_on_each_other_one_way() {
    let graph = dependencies();
    assert!(graph.contains_key("bus") && graph.contains_key("gateway"), "the checker reads src/: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import circle among src/ modules: {}\nall dependencies: {graph:#?}", cycle.join(" -> "));
    }
}

#[test]
fn no_source_file_is_over_600_lines() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut long: Vec<String> = files
        .iter()
        .filter(|f| !f.ends_with("tests.rs"))
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let lines = without_tests(&text).lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", f.strip_prefix(src()).unwrap().display()))
        })
        .collect();
    long.sort();
    assert!(long.is_empty(), "over {MAX_LINES} lines outside tests: {long:?}");
}

/// Safe by default: every crate root under `src/` denies unsafe code, and a file that allows it
/// says why in the comment just above the allowance.
#[test]
fn unsafe_code_is_denied_except_where_a_file_says_why() {
    for root in ["lib.rs", "main.rs", "bin/herald-bench/main.rs"] {
        let text = std::fs::read_to_string(src().join(root)).unwrap();
        assert!(text.contains("#![deny(unsafe_code)]"), "src/{root} does not deny unsafe code");
    }
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut unexplained = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("#![allow(unsafe_code)]") || line.trim_start().starts_with("#[allow(unsafe_code)]") {
                let said = i > 0 && lines[i - 1].trim_start().starts_with("//") && !lines[i - 1].trim_start().starts_with("//!");
                if !said {
                    unexplained.push(format!("{}:{}", file.strip_prefix(src()).unwrap().display(), i + 1));
                }
            }
        }
    }
    assert!(unexplained.is_empty(), "unsafe code allowed without a comment saying why: {unexplained:?}");
}
