//! The layers of `netstack/src` point one way. This test reads every file of the crate,
//! finds each path it imports (`use crate::…`, `use super::…`, and `crate::…` paths in
//! code), and fails on an import of a layer that comes later in [`LAYERS`] than the
//! importing file's own, or of the crate root's re-exports from inside a layer. It also
//! fails on a file that belongs to no layer, so a new folder is placed on purpose, and on
//! files that import each other in a circle (a module and its own children excepted).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// The layers of `netstack/src`, lowest first. A file may import from its own layer
/// and from the layers before it in this list, never from one after it. A file belongs
/// to the longest entry its module path starts with; a folder that only gathers layers
/// (`stage/mod.rs`) may import nothing but its own children.
const LAYERS: &[&str] = &[
    // Small shared values.
    "base",
    // Bytes only: formats, views, parse and rewrite.
    "wire",
    // State without parsing.
    "table",
    // Decide and rewrite; a stage uses only the stages listed before it.
    "stage::local",
    "stage::lb",
    "stage::nat",
    "stage::route",
    "stage::sleeve",
    "stage::overlay",
    // The only place that knows every stage.
    "pipeline",
];

/// One Rust file of the crate: its module path (`stage::nat::translate`) and text.
struct File {
    module: String,
    text: String,
}

fn files(dir: &Path, out: &mut Vec<File>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("netstack/src is readable")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
            let rel = path.strip_prefix(&src).expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            out.push(File {
                module: parts.join("::"),
                text: fs::read_to_string(&path).expect("a readable file"),
            });
        }
    }
}

/// The layer a module belongs to: the index of the longest entry its path starts with.
fn layer(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .enumerate()
        .filter(|(_, l)| module == **l || module.starts_with(&format!("{l}::")))
        .max_by_key(|(_, l)| l.len())
        .map(|(i, _)| i)
}

/// Whether `module` only gathers layers: some entry lies below it.
fn gathers_layers(module: &str) -> bool {
    LAYERS.iter().any(|l| l.starts_with(&format!("{module}::")))
}

/// The text of a file without comments (line comments and doc comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a `use` tree names: `a::{b, c::{d, e}}` is `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(&tree);
        return vec![path.trim_end_matches("::*").to_string()];
    };
    let prefix = tree[..open].trim_end_matches("::");
    let inner = &tree[open + 1..tree.len() - 1];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            expand(p).into_iter().map(move |rest| match rest.as_str() {
                "self" => prefix.to_string(),
                _ => format!("{prefix}::{rest}"),
            })
        })
        .collect()
}

/// Every path a piece of code names that starts at `crate`, `super` or `self`.
fn imports(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    // `use` statements (rustfmt starts each on its own line), their trees expanded.
    let lines: Vec<&str> = code.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim_start();
        let Some(tree) = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .find_map(|p| line.strip_prefix(p))
        else {
            continue;
        };
        if !["crate::", "super::", "self::"]
            .iter()
            .any(|p| tree.starts_with(p))
        {
            continue;
        }
        let mut stmt = tree.to_string();
        for next in &lines[i + 1..] {
            if stmt.contains(';') {
                break;
            }
            stmt.push_str(next);
        }
        let stmt = stmt.split(';').next().unwrap_or_default();
        out.extend(expand(stmt));
    }
    // Paths written out in code (`crate::wire::vxlan::ENCAP_OVERHEAD`).
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            let before = at.checked_sub(1).map(|i| bytes[i] as char);
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            out.push(code[at..end].trim_end_matches(':').to_string());
        }
    }
    out
}

/// `path` (as written in `module`) as a path from the crate root.
fn absolute(module: &str, path: &str) -> String {
    let mut base: Vec<&str> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    let mut rest: Vec<&str> = path.split("::").collect();
    match rest.first().copied() {
        Some("crate") => {
            base.clear();
            rest.remove(0);
        }
        Some("self") => {
            rest.remove(0);
        }
        _ => {
            while rest.first() == Some(&"super") {
                base.pop();
                rest.remove(0);
            }
        }
    }
    base.extend(rest);
    base.join("::")
}

/// The longest module of the crate that `path` starts with ("" is the crate root).
fn module_of<'a>(modules: &'a BTreeSet<String>, path: &str) -> &'a str {
    modules
        .iter()
        .filter(|m| m.is_empty() || path == m.as_str() || path.starts_with(&format!("{m}::")))
        .max_by_key(|m| m.len())
        .map(String::as_str)
        .unwrap_or("")
}

/// Every file of the crate, and the modules each one imports (as written, and the
/// module of the crate it resolves to), its inline test module's included.
fn crate_imports() -> Vec<(File, Vec<(String, String)>)> {
    let mut all = Vec::new();
    files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut all);
    let modules: BTreeSet<String> = all.iter().map(|f| f.module.clone()).collect();
    all.into_iter()
        .map(|file| {
            let code = code(&file.text);
            // A module written inline at the end of a file (`mod tests { … }`) resolves
            // `super` from inside it.
            let lines: Vec<&str> = code.lines().collect();
            let split = lines
                .iter()
                .position(|l| l.starts_with("mod ") && l.trim_end().ends_with('{'));
            let parts = match split {
                Some(at) => {
                    let name = lines[at]["mod ".len()..].trim_end_matches('{').trim();
                    vec![
                        (file.module.clone(), lines[..at].join("\n")),
                        (format!("{}::{name}", file.module), lines[at..].join("\n")),
                    ]
                }
                None => vec![(file.module.clone(), code.clone())],
            };
            let found = parts
                .iter()
                .flat_map(|(module, text)| {
                    imports(text).into_iter().map(|path| {
                        let target = absolute(module, &path);
                        (path, module_of(&modules, &target).to_string())
                    })
                })
                .collect();
            (file, found)
        })
        .collect()
}

#[test]
fn imports_point_down_the_layers() {
    let mut wrong = Vec::new();
    for (file, found) in crate_imports() {
        if file.module.is_empty() {
            // The crate root re-exports the pipeline's face; it may name anything.
            continue;
        }
        let own = layer(&file.module);
        if own.is_none() && !gathers_layers(&file.module) {
            wrong.push(format!("{}: in no layer (add it to LAYERS)", file.module));
            continue;
        }
        for (path, target) in found {
            let allowed = match own {
                // A folder that gathers layers imports only its own children.
                None => target.starts_with(&format!("{}::", file.module)),
                Some(own) => layer(&target).is_some_and(|t| t <= own),
            };
            if !allowed {
                wrong.push(format!("{}: {path} ({target})", file.module));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layer order (lowest first: {LAYERS:?}):\n{}",
        wrong.join("\n")
    );
}

/// Whether one module contains the other (a module and its children are one piece).
fn related(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let mut graph: Vec<(String, Vec<String>)> = crate_imports()
        .into_iter()
        .map(|(file, found)| {
            let mut to: Vec<String> = found
                .into_iter()
                .map(|(_, target)| target)
                .filter(|t| !t.is_empty() && !related(&file.module, t))
                .collect();
            to.sort();
            to.dedup();
            (file.module, to)
        })
        .collect();
    graph.sort();
    // Depth-first search; a module reached again while on the path closes a circle.
    fn visit(
        graph: &[(String, Vec<String>)],
        at: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        circles: &mut Vec<String>,
    ) {
        if let Some(i) = path.iter().position(|p| p == at) {
            circles.push(format!("{} -> {at}", path[i..].join(" -> ")));
            return;
        }
        if !done.insert(at.to_string()) {
            return;
        }
        path.push(at.to_string());
        let next = graph.iter().find(|(m, _)| m == at).map(|(_, t)| t.clone());
        for to in next.unwrap_or_default() {
            visit(graph, &to, path, done, circles);
        }
        path.pop();
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for (module, _) in &graph {
        visit(&graph, module, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_reader_sees_through_use_trees_and_relative_paths() {
    assert_eq!(
        expand("crate::base::{self, Endpoint, ports::{CHECK_PORTS, SNAT_PORTS}}"),
        [
            "crate::base",
            "crate::base::Endpoint",
            "crate::base::ports::CHECK_PORTS",
            "crate::base::ports::SNAT_PORTS"
        ]
    );
    assert_eq!(expand("super::*"), ["super"]);
    assert_eq!(
        absolute("stage::nat::icmp", "super::Nat"),
        "stage::nat::Nat"
    );
    assert_eq!(absolute("stage::nat", "super::super::base"), "base");
    assert_eq!(layer("stage::nat::translate"), Some(5));
    assert_eq!(layer("stage"), None);
    let found = imports(
        "use crate::wire::{l4, rewrite};\npub(super) use super::x;\nlet n = crate::table::snat::SnatPorts::new(a, b);",
    );
    assert_eq!(
        found,
        [
            "crate::wire::l4",
            "crate::wire::rewrite",
            "super::x",
            "crate::wire",
            "crate::table::snat::SnatPorts::new",
            "super::x"
        ]
    );
}
