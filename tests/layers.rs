//! The library's layers: every top-level module of `src/` imports only from layers below it (or
//! from itself), so no circle can form; inside a module, its sub-modules import each other
//! without circles; `src/main.rs` stays a thin dispatch. Reads `use crate::`, `crate::` and
//! `super::` paths of every source file (comments stripped).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of each top-level module, lowest first (the README's architecture section shows the
/// same map). A new module must be placed here.
const LAYERS: &[(&str, u32)] = &[
    ("core", 0),
    ("imaging", 1),
    ("metrics", 1),
    ("plot", 1),
    ("data", 2),
    ("deid", 2),
    ("database", 2),
    ("ir", 2),
    ("model", 3),
    ("objects", 3),
    ("security", 3),
    ("modelfile", 4),
    ("backend", 5),
    ("store", 5),
    ("runtime", 6),
    ("inference", 7),
    ("workflows", 8),
    ("serve", 9),
];

/// Items the crate root re-exports, and the module they come from.
const ROOT_REEXPORTS: &[(&str, &str)] = &[("Error", "core"), ("Result", "core")];

const MAIN_RS_MAX_LINES: usize = 400;

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Module path of a library file: `src/a/mod.rs` -> [a], `src/a/b.rs` -> [a, b].
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The source without `//` comments (doc comments included) and without string literals.
fn code_of(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| {
            let mut out = String::new();
            let mut in_string = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                if in_string {
                    if c == '\\' {
                        chars.next();
                    } else if c == '"' {
                        in_string = false;
                    }
                    continue;
                }
                if c == '"' {
                    in_string = true;
                    continue;
                }
                if c == '/' && chars.peek() == Some(&'/') {
                    break;
                }
                out.push(c);
            }
            out
        })
        .collect()
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Module paths (as segments) a line refers to through `crate::` or `super::`, resolved from
/// the file at `own`.
fn referenced(line: &str, own: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < line.len() {
        let rest = &line[i..];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let (base, after) = if boundary && rest.starts_with("crate::") {
            (Vec::new(), &rest["crate::".len()..])
        } else if boundary && rest.starts_with("super::") {
            let mut after = rest;
            let mut up = 0;
            while let Some(r) = after.strip_prefix("super::") {
                after = r;
                up += 1;
            }
            let keep = own.len().saturating_sub(up);
            (own[..keep].to_vec(), after)
        } else {
            i += 1;
            continue;
        };
        let consumed = rest.len() - after.len();
        // `{a, b::c}` groups: the first segment of each member.
        let firsts: Vec<Vec<String>> = if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end]
                .split(',')
                .map(|m| m.trim().split("::").map(ident).collect::<Vec<_>>())
                .filter(|m| m.first().is_some_and(|s| !s.is_empty()))
                .collect()
        } else {
            vec![after.split("::").map(ident).collect()]
        };
        for segs in firsts {
            let mut path = base.clone();
            path.extend(segs.into_iter().take_while(|s| !s.is_empty()));
            if !path.is_empty() {
                out.push(path);
            }
        }
        i += consumed.max(1);
    }
    out
}

struct Edge {
    from: Vec<String>,
    to: Vec<String>,
    at: String,
}

fn library_edges(src: &Path) -> Vec<Edge> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        // The binary (src/main.rs, src/cli/) sits above every layer.
        if rel == Path::new("main.rs") || rel == Path::new("lib.rs") || rel.starts_with("cli") {
            continue;
        }
        let own = module_path(src, &file);
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in code_of(&text).iter().enumerate() {
            for mut to in referenced(line, &own) {
                if let Some((_, module)) = ROOT_REEXPORTS.iter().find(|(item, _)| *item == to[0]) {
                    to.insert(0, module.to_string());
                }
                edges.push(Edge {
                    from: own.clone(),
                    to,
                    at: format!("{}:{}", rel.display(), n + 1),
                });
            }
        }
    }
    edges
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_top_level_module_has_a_layer() {
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(src()).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        let is_module = p.is_dir() || p.extension().is_some_and(|e| e == "rs");
        if is_module && !["lib", "main", "cli"].contains(&name.as_str()) && layer(&name).is_none() {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "top-level modules without a layer in tests/layers.rs: {missing:?}"
    );
}

/// The edges that do not go strictly downward.
fn upward(edges: &[Edge]) -> Vec<String> {
    let mut violations = Vec::new();
    for e in edges {
        let (from, to) = (&e.from[0], &e.to[0]);
        if from == to || to == "*" || to == "self" {
            continue;
        }
        match (layer(from), layer(to)) {
            (Some(a), Some(b)) if b < a => {}
            (Some(a), Some(b)) => violations.push(format!(
                "{}: {from} (layer {a}) imports {} (layer {b})",
                e.at,
                e.to.join("::")
            )),
            // Not a module of ours (e.g. a macro path); nothing to check.
            _ => {}
        }
    }
    violations
}

#[test]
fn no_module_imports_a_layer_at_or_above_its_own() {
    let violations = upward(&library_edges(&src()));
    assert!(
        violations.is_empty(),
        "imports that go upward or sideways:\n{}",
        violations.join("\n")
    );
}

/// Sub-modules of one top-level module, and which of them each imports.
fn sibling_graph(edges: &[Edge]) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut graph: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for e in edges {
        if e.from.len() < 2 || e.to.len() < 2 || e.from[0] != e.to[0] || e.from[1] == e.to[1] {
            continue;
        }
        graph
            .entry(e.from[0].clone())
            .or_default()
            .entry(e.from[1].clone())
            .or_default()
            .insert(e.to[1].clone());
    }
    graph
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn sub_modules_import_each_other_without_circles() {
    let graph = sibling_graph(&library_edges(&src()));
    let cycles: Vec<String> = graph
        .iter()
        .filter_map(|(top, g)| find_cycle(g).map(|c| format!("{top}: {}", c.join(" -> "))))
        .collect();
    assert!(cycles.is_empty(), "import circles: {cycles:?}");
}

#[test]
fn the_checker_sees_upward_imports_groups_and_super_paths() {
    let own = vec!["data".to_string(), "loader".to_string()];
    let found = referenced(
        "use crate::{imaging::Scan, workflows::train}; let x = super::super::serve::f();",
        &own,
    );
    let tops: Vec<&str> = found.iter().map(|p| p[0].as_str()).collect();
    assert_eq!(tops, ["imaging", "workflows", "serve"]);
    let code = code_of("let supercrate::x = 1; // crate::serve");
    assert!(referenced(&code[0], &own).is_empty());
    let edge = |from: &str, to: &str| Edge {
        from: vec![from.to_string()],
        to: vec![to.to_string()],
        at: "x.rs:1".into(),
    };
    assert_eq!(
        upward(&[edge("data", "imaging"), edge("data", "data")]).len(),
        0
    );
    assert_eq!(
        upward(&[edge("data", "ir"), edge("core", "serve")]).len(),
        2
    );
    let code = code_of("let s = \"crate::serve\"; // use crate::serve;");
    assert!(referenced(&code[0], &own).is_empty());
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(find_cycle(&g).is_some());
    g.insert("b".to_string(), BTreeSet::new());
    assert!(find_cycle(&g).is_none());
}

#[test]
fn main_rs_is_a_thin_dispatch() {
    let main = std::fs::read_to_string(src().join("main.rs")).unwrap();
    let lines = main.lines().count();
    assert!(
        lines <= MAIN_RS_MAX_LINES,
        "src/main.rs has {lines} lines (at most {MAIN_RS_MAX_LINES})"
    );
}

#[test]
fn the_library_writes_to_the_terminal_only_through_tracing() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut found = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src()).unwrap().to_path_buf();
        if rel == Path::new("main.rs") || rel.starts_with("cli") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in code_of(&text).iter().enumerate() {
            if line.contains("eprintln!") || line.contains("println!") {
                found.push(format!("{}:{}", rel.display(), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "print macros in the library (use tracing): {found:?}"
    );
}

#[test]
fn the_library_reads_no_environment_variable() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for file in files {
        let rel = file.strip_prefix(src()).unwrap().to_path_buf();
        if rel.starts_with("cli") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = code_of(&text).join("\n");
        assert!(
            !code.contains("env::var"),
            "{} reads an environment variable; the CLI does that (clap's `#[arg(env)]`)",
            rel.display()
        );
    }
}
