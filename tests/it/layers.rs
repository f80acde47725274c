//! Issue 18, item 19: the modules' layering, as main.rs's `//!` comment states it, checked on
//! every `use crate::...` of src/**/*.rs: a module uses only its own layer and the ones below
//! it, and modules of one layer use each other without a cycle. No server needed.
//!
//! The run path reads cli → options → run → supervise: options is built from cli's parse (it
//! uses cli), run takes options (it uses options) and hands the command to supervise (it uses
//! supervise). In use-edges, top to bottom, that is run, options, cli, supervise.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom; a module may use its own layer and the ones below it.
const LAYERS: &[&[&str]] = &[
    &["docs"],
    &["run"],
    &["options"],
    &["cli"],
    &["supervise"],
    &["lock", "report", "ledger", "doctor"],
    &["pg"],
    &["conninfo", "tls", "ping"],
    &[
        "appname", "key", "exit", "log", "duration", "output", "lease", "clock", "capture",
    ],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The first segment of every path a `use crate::...;` statement names, comments aside.
fn used(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("use crate::") {
        let statement = &rest[at + "use crate::".len()..];
        let end = statement.find(';').unwrap_or(statement.len());
        let tree = &statement[..end];
        rest = &statement[end..];
        match tree.trim().strip_prefix('{') {
            None => names.push(first_segment(tree)),
            Some(inner) => {
                let inner = inner.trim_end().trim_end_matches('}');
                let mut depth = 0;
                let mut item = String::new();
                for c in inner.chars().chain([',']) {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            if !item.trim().is_empty() {
                                names.push(first_segment(&item));
                            }
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
            }
        }
    }
    names
}

fn first_segment(path: &str) -> String {
    let path = path.trim();
    let end = path
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(path.len());
    path[..end].to_string()
}

/// Module → the modules it uses, for every file under `src` (`src/cli/*.rs` counts as `cli`).
/// Macros exported at the crate root count as the module that defines them.
fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut all = Vec::new();
    files(src, &mut all);
    let mut macros = BTreeMap::new();
    let mut sources = Vec::new();
    for path in &all {
        let rel = path.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        let text = std::fs::read_to_string(path).unwrap();
        for (at, _) in text.match_indices("macro_rules! ") {
            macros.insert(first_segment(&text[at + 13..]), module.clone());
        }
        sources.push((module, text));
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in sources {
        for name in used(&text) {
            let target = macros.get(&name).cloned().unwrap_or(name);
            if target != module {
                graph.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    graph
}

/// Every edge that points up or into a module the layering does not place, and every cycle.
fn violations(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut found = Vec::new();
    for (from, tos) in graph {
        if from == "main" {
            continue;
        }
        for to in tos {
            match (rank(from), rank(to)) {
                (Some(f), Some(t)) if t < f => found.push(format!("{from} -> {to} points up")),
                (None, _) => found.push(format!("{from} is in no layer")),
                (_, None) => found.push(format!("{to} (used by {from}) is in no layer")),
                _ => {}
            }
        }
    }
    // Cycles: depth-first, with the path on the stack.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            found.push(format!("cycle: {} -> {node}", stack[at..].join(" -> ")));
            return;
        }
        if !done.insert(node.to_string()) {
            return;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, stack, done, found);
        }
        stack.pop();
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn use_crate_edges_follow_the_layering() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = edges(&src);
    assert!(
        graph.get("run").is_some_and(|d| d.contains("supervise")),
        "{graph:?}"
    );
    let found = violations(&graph);
    assert!(found.is_empty(), "{}\n\n{graph:#?}", found.join("\n"));

    // main.rs states the same layering.
    let main = std::fs::read_to_string(src.join("main.rs")).unwrap();
    for layer in LAYERS.iter().skip(1) {
        for module in *layer {
            assert!(
                main.contains(&format!("[`{module}`]")),
                "main.rs does not place {module}"
            );
        }
    }
}

#[test]
fn the_checker_sees_what_it_must() {
    let uses = used(
        "use crate::{a, b::{C, d::E}, f};\n// use crate::commented;\npub use crate::g::H;\n\
         use crate::{\n    step,\n    i::J,\n};",
    );
    assert_eq!(uses, ["a", "b", "f", "g", "step", "i"]);
    let graph = |pairs: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in pairs {
            g.entry(from.to_string())
                .or_default()
                .insert(to.to_string());
        }
        g
    };
    assert_eq!(
        violations(&graph(&[("ledger", "cli")])),
        ["ledger -> cli points up"]
    );
    assert_eq!(
        violations(&graph(&[("ledger", "pg"), ("lock", "key")])),
        Vec::<String>::new()
    );
    let cycle = violations(&graph(&[("lock", "report"), ("report", "lock")]));
    assert_eq!(cycle, ["cycle: lock -> report -> lock"]);
    assert_eq!(
        violations(&graph(&[("new", "key")])),
        ["new is in no layer"]
    );
}
