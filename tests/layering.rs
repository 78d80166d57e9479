//! The code's shape, checked: the top-level modules of `src/` follow the dependency rule
//! docs/architecture.md states and depend on each other one way only; the files of every crate
//! of the workspace form no circle either; no source file outside tests grows past 600 lines; unsafe code is denied except in
//! the few files that say why they need it; the Socket.IO server's crate depends on no herald
//! crate, and herald's RESP module on nothing else in herald.
//!
//! A module depends on another when any of its files names `crate::<other>` (in a `use` or a
//! path). Reading the text is enough: herald names other modules only that way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The source folders of the workspace's crates: herald, its Socket.IO server, its load
/// generator. The file-level checks hold in each.
fn crate_sources() -> [PathBuf; 3] {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [src(), root.join("crates/socketio/src"), root.join("crates/herald-bench/src")]
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
    // The first `#[cfg(test)]` that opens a module (`mod tests`, `pub(crate) mod tests`, after
    // other attributes), not one on a field or an item.
    let opens_a_module = |at: &usize| {
        let mut rest = text[at + "#[cfg(test)]".len()..].trim_start();
        while rest.starts_with("#[") {
            rest = rest[rest.find(']').map_or(rest.len(), |end| end + 1)..].trim_start();
        }
        let rest = rest.strip_prefix("pub(crate) ").or_else(|| rest.strip_prefix("pub ")).unwrap_or(rest);
        rest.starts_with("mod ")
    };
    text.match_indices("#[cfg(test)]").map(|(at, _)| at).find(opens_a_module).map_or(text, |at| &text[..at])
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

/// The dependency rule docs/architecture.md states. The shared modules serve every stage and
/// depend on no stage; route and bus, the middle of the flow, on no other stage; source (where
/// records enter) on route and bus; gateway (where they leave) on the bus, whose `Inbound` it
/// implements. Only the process's edges, its HTTP front and the wiring, use source or gateway.
const SHARED: &[&str] =
    &["auth", "clock", "config", "metrics", "notification", "process", "replay", "supervise", "telemetry", "throttle", "watch"];
const STAGES: &[(&str, &[&str])] = &[
    ("route", &[]),
    ("bus", &[]),
    ("source", &["route", "bus"]),
    ("gateway", &["bus"]),
    ("http", &["source", "route", "bus", "gateway"]),
    ("app", &["source", "route", "bus", "gateway", "http"]),
];

/// The dependencies in `graph` the rule does not allow, as `from -> to`.
fn rule_breaks(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut broken = Vec::new();
    for (module, deps) in graph {
        let allowed: Vec<&str> = if SHARED.contains(&module.as_str()) {
            SHARED.to_vec()
        } else {
            let Some((_, stages)) = STAGES.iter().find(|(m, _)| m == module) else {
                broken.push(format!("{module} is neither shared nor a stage: place it in the rule"));
                continue;
            };
            SHARED.iter().chain(stages.iter()).copied().collect()
        };
        broken.extend(deps.iter().filter(|d| !allowed.contains(&d.as_str())).map(|d| format!("{module} -> {d}")));
    }
    broken
}

#[test]
fn src_modules_follow_the_stated_dependency_rule() {
    let wrong: BTreeMap<String, BTreeSet<String>> = [("bus", "route"), ("metrics", "gateway"), ("source", "bus")]
        .into_iter()
        .map(|(f, t)| (f.to_owned(), BTreeSet::from([t.to_owned()])))
        .collect();
    assert_eq!(rule_breaks(&wrong), ["bus -> route", "metrics -> gateway"]);
    let broken = rule_breaks(&dependencies());
    assert!(broken.is_empty(), "dependencies against the rule of docs/architecture.md: {broken:?}");
}

#[test]
fn no_source_file_is_over_600_lines() {
    let mut files = Vec::new();
    for source in crate_sources() {
        rust_files(&source, &mut files);
    }
    let mut long: Vec<String> = files
        .iter()
        .filter(|f| !f.ends_with("tests.rs"))
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let lines = without_tests(&text).lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    long.sort();
    assert!(long.is_empty(), "over {MAX_LINES} lines outside tests: {long:?}");
}

/// Safe by default: every crate root of the workspace denies unsafe code, and a file that
/// allows it says why in the comment just above the allowance.
#[test]
fn unsafe_code_is_denied_except_where_a_file_says_why() {
    let mut files = Vec::new();
    for source in crate_sources() {
        let roots: Vec<PathBuf> = ["lib.rs", "main.rs"].iter().map(|r| source.join(r)).filter(|r| r.exists()).collect();
        assert!(!roots.is_empty(), "no crate root in {}", source.display());
        for root in roots {
            let text = std::fs::read_to_string(&root).unwrap();
            assert!(text.contains("#![deny(unsafe_code)]"), "{} does not deny unsafe code", root.display());
        }
        rust_files(&source, &mut files);
    }
    let mut unexplained = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("#![allow(unsafe_code)]") || line.trim_start().starts_with("#[allow(unsafe_code)]") {
                let said = i > 0 && lines[i - 1].trim_start().starts_with("//") && !lines[i - 1].trim_start().starts_with("//!");
                if !said {
                    unexplained.push(format!("{}:{}", file.display(), i + 1));
                }
            }
        }
    }
    assert!(unexplained.is_empty(), "unsafe code allowed without a comment saying why: {unexplained:?}");
}

/// The module a file under `source` is (`src/bus/redis/mod.rs` -> `bus::redis`,
/// `src/bus/envelope.rs` -> `bus::envelope`); the crate root is `crate`.
fn file_module(source: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(source).unwrap().with_extension("");
    let mut parts: Vec<&str> = relative.iter().map(|p| p.to_str().unwrap()).collect();
    if matches!(parts.first(), Some(&"bin")) {
        return None;
    }
    if matches!(parts[..], ["lib"] | ["main"]) {
        return Some("crate".to_owned());
    }
    if parts.last() == Some(&"mod") {
        parts.pop();
    }
    Some(parts.join("::"))
}

/// The paths `text` names after `prefix` (`crate::`, `super::`, `self::`, or a child module's
/// name), one per item of a `{...}` group, as their `::`-separated segments.
fn paths_after(text: &str, prefix: &str) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let segments = |s: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = s;
        loop {
            let name: String = rest.chars().take_while(|c| ident(*c)).collect();
            if name.is_empty() {
                return out;
            }
            rest = &rest[name.len()..];
            out.push(name);
            match rest.strip_prefix("::") {
                Some(r) if !r.starts_with('{') => rest = r,
                _ => return out,
            }
        }
    };
    let mut found = Vec::new();
    for (at, _) in text.match_indices(prefix) {
        // A whole path starts here: not `x::crate::` nor `foo_super::`.
        if text[..at].chars().next_back().is_some_and(|c| ident(c) || c == ':') {
            continue;
        }
        let rest = &text[at + prefix.len()..];
        let head = segments(rest);
        let consumed = head.iter().map(String::len).sum::<usize>() + 2 * head.len().saturating_sub(1);
        let tail = &rest[consumed..];
        match if head.is_empty() { tail.strip_prefix('{') } else { tail.strip_prefix("::{") } {
            Some(group) => {
                // The items of the group, at its top level.
                let (mut depth, mut start, mut items) = (0, 0, Vec::new());
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            items.push(&group[start..i]);
                            break;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            items.push(&group[start..i]);
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                for item in items {
                    let mut path = head.clone();
                    path.extend(segments(item.trim()));
                    found.push(path);
                }
            }
            _ => found.push(head),
        }
    }
    found
}

/// Which files of the crate under `source` name which others: an edge from a module to the
/// module (file) a path of its resolves to, the longest prefix of the path that is a module, or
/// the crate root (`crate`, the `lib.rs` or `main.rs` that declares the top-level modules) for a
/// path to something the root itself defines.
fn file_dependencies(source: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(source, &mut files);
    let modules: BTreeMap<String, PathBuf> = files.iter().filter_map(|f| Some((file_module(source, f)?, f.clone()))).collect();
    let resolve = |path: Vec<String>| -> String {
        (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| modules.contains_key(m)).unwrap_or_else(|| "crate".to_owned())
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        let text = without_tests(&text);
        let own: Vec<String> = if module == "crate" { Vec::new() } else { module.split("::").map(str::to_owned).collect() };
        let parent = own[..own.len().saturating_sub(1)].to_vec();
        let mut named = paths_after(text, "crate::");
        for path in paths_after(text, "super::") {
            named.push(parent.iter().cloned().chain(path).collect());
        }
        for path in paths_after(text, "self::") {
            named.push(own.iter().cloned().chain(path).collect());
        }
        // A parent names its children by their bare names too (`use child::X`, `child::f()`).
        let prefix = if own.is_empty() { String::new() } else { format!("{module}::") };
        let children = modules.keys().filter(|m| *m != "crate").filter_map(|m| m.strip_prefix(&prefix)).filter(|c| !c.contains("::"));
        for child in children {
            for path in paths_after(text, &format!("{child}::")) {
                named.push(own.iter().cloned().chain([child.to_owned()]).chain(path).collect());
            }
            if text.contains(&format!("use {child};")) {
                named.push(own.iter().cloned().chain([child.to_owned()]).collect());
            }
        }
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(named.into_iter().map(&resolve).filter(|m| m != module));
    }
    graph
}

/// The strongly connected parts of `graph` with more than one node: its circles, each sorted.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<Vec<String>> {
    // Two nodes are in one circle when each reaches the other.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(n) = todo.pop() {
            for next in graph.get(&n).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> = graph.keys().map(|k| (k, reach(k))).collect();
    let mut out = BTreeSet::new();
    for (node, from_it) in &reached {
        let circle: Vec<String> = from_it.iter().filter(|other| reached.get(other).is_some_and(|r| r.contains(*node))).cloned().collect();
        if circle.len() > 1 {
            out.insert(circle);
        }
    }
    out
}

#[test]
fn the_file_checker_reads_groups_and_relative_paths() {
    let text = "use super::{flusher::Flusher, session::{self, Session}};\nuse crate::bus::{envelope, Inbound};\nlet x = self::queue::Queue::new();";
    assert_eq!(paths_after(text, "super::"), [vec!["flusher", "Flusher"], vec!["session"]]);
    assert_eq!(paths_after(text, "crate::"), [vec!["bus", "envelope"], vec!["bus", "Inbound"]]);
    assert_eq!(paths_after(text, "self::"), [vec!["queue", "Queue", "new"]]);
    let code = "struct A {\n    #[cfg(test)]\n    seen: u8,\n}\nuse crate::b;\n#[cfg(test)]\n#[allow(unused)]\npub(crate) mod tests {}";
    assert_eq!(without_tests(code), "struct A {\n    #[cfg(test)]\n    seen: u8,\n}\nuse crate::b;\n");
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", "b"), ("b", "a"), ("c", "a")].into_iter().map(|(from, to)| (from.to_owned(), BTreeSet::from([to.to_owned()]))).collect();
    assert_eq!(circles(&graph), BTreeSet::from([vec!["a".to_owned(), "b".to_owned()]]));
}

#[test]
fn files_depend_on_each_other_one_way() {
    let [herald, socketio, bench] = crate_sources();
    let herald_graph = file_dependencies(&herald);
    assert!(
        herald_graph.get("bus::redis").is_some_and(|d| d.contains("bus::redis::resp")),
        "the checker reads src/ by file: {herald_graph:?}"
    );
    let mut found = Vec::new();
    for (name, source) in [("herald", herald), ("socketio", socketio), ("herald-bench", bench)] {
        let graph = file_dependencies(&source);
        for circle in circles(&graph) {
            // The edges that close it: what to move to break it.
            for from in &circle {
                let to: Vec<&String> = graph[from].iter().filter(|t| circle.contains(t)).collect();
                found.push(format!("{name}: {from} -> {to:?}"));
            }
        }
    }
    assert!(found.is_empty(), "import circles among files; the edges inside them:\n{}", found.join("\n"));
}

/// The Socket.IO server is a part of its own: its manifest names no herald crate, so herald can
/// reach it only through its public API, and it builds, tests and runs its example alone.
#[test]
fn the_socketio_crate_does_not_depend_on_herald() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/socketio");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let herald_deps: Vec<&str> = manifest.lines().filter(|l| l.trim_start().starts_with("herald")).collect();
    assert!(herald_deps.is_empty(), "crates/socketio depends on herald: {herald_deps:?}");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let naming: Vec<String> =
        files.iter().filter(|f| std::fs::read_to_string(f).unwrap().contains("herald::")).map(|f| f.display().to_string()).collect();
    assert!(naming.is_empty(), "files of crates/socketio name herald's code: {naming:?}");
}

/// herald's RESP code follows the same rule inside herald: it names no other file of the crate,
/// so it could leave for a crate of its own as the server did.
#[test]
fn the_resp_module_depends_on_nothing_else_in_herald() {
    let graph = file_dependencies(&src());
    let resp = graph.get("bus::redis::resp").expect("the checker reads bus/redis/resp.rs");
    assert!(resp.is_empty(), "bus::redis::resp names {resp:?}");
}
