//! kluis-core's modules form a directed acyclic graph (issue 17: the 15-module import cycle
//! must not come back unnoticed). Each module's dependencies are the `crate::NAME` paths in its
//! code, outside comments and outside its `#[cfg(test)]` module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name → the modules its code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("read src/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if name != "lib" {
                files.insert(name, std::fs::read_to_string(&path).expect("read module"));
            }
        }
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(name, text)| {
            let code = text.split("\n#[cfg(test)]").next().unwrap_or("");
            let mut deps = BTreeSet::new();
            for line in code.lines() {
                let line = line.trim_start();
                if line.starts_with("//") {
                    continue;
                }
                for (i, _) in line.match_indices("crate::") {
                    let rest = &line[i + "crate::".len()..];
                    let dep: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if modules.contains(&dep) && dep != *name {
                        deps.insert(dep);
                    }
                }
            }
            (name.clone(), deps)
        })
        .collect()
}

/// A cycle through `node`, if the depth-first search from it finds one.
fn find_cycle(
    node: &str,
    graph: &BTreeMap<String, BTreeSet<String>>,
    done: &mut BTreeSet<String>,
    path: &mut Vec<String>,
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
    for dep in &graph[node] {
        if let Some(cycle) = find_cycle(dep, graph, done, path) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(node.to_owned());
    None
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    assert!(graph.len() > 10, "found the modules: {:?}", graph.keys());
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = find_cycle(node, &graph, &mut done, &mut Vec::new()) {
            panic!(
                "kluis-core's modules import each other in a cycle: {}\n(move what both need \
                 into a lower module, such as `format` for constants)",
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn the_bottom_modules_depend_on_nothing_above_them() {
    let graph = graph();
    assert_eq!(graph["format"], BTreeSet::new(), "format is the bottom");
    assert_eq!(graph["sink"], BTreeSet::new(), "sink needs only std::io");
    for low in ["error", "wire", "primitives", "secret"] {
        let allowed: BTreeSet<&str> = ["format", "error", "wire", "primitives"].into();
        let above: Vec<_> = graph[low]
            .iter()
            .filter(|d| !allowed.contains(d.as_str()))
            .collect();
        assert!(above.is_empty(), "{low} depends on {above:?}");
    }
}

/// The checker itself finds a cycle (so a passing test means something).
#[test]
fn a_cycle_is_found() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    graph.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    let cycle = find_cycle("a", &graph, &mut BTreeSet::new(), &mut Vec::new());
    assert_eq!(cycle.unwrap(), ["a", "b", "c", "a"]);
}

/// DESIGN: kluis-core does no file-system I/O (identity files on disk are kluis-file's).
#[test]
fn the_core_does_no_file_system_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).expect("read src/") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read module");
        let code = text.split("\n#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for io in ["std::fs", "fs::File", "OpenOptions", "std::path"] {
                assert!(
                    !line.contains(io),
                    "{}:{}: kluis-core does no file-system I/O, but uses `{io}`",
                    path.display(),
                    n + 1
                );
            }
        }
    }
}
