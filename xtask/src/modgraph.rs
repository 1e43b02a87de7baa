//! Import cycles among a crate's modules, read from its source: the tests
//! below keep the agent's and the kernel crate's module graphs acyclic.
//!
//! Nodes are sibling modules (children of one parent); `a -> b` when code
//! anywhere in `a`'s subtree names something in `b`'s subtree (`use`
//! trees, and paths in code: `crate::`, `super::`, `self::`). A module
//! naming its own parent or children is not an edge: that is nesting, not a
//! circle.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// A module path from the crate root (`["gate", "judge"]`).
type ModPath = Vec<String>;

/// Every `.rs` file under `src` and its module path.
fn modules(src: &Path) -> std::io::Result<Vec<(ModPath, String)>> {
    fn walk(dir: &Path, at: &[String], out: &mut Vec<(ModPath, String)>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if e.file_type()?.is_dir() {
                let mut sub = at.to_vec();
                sub.push(name);
                walk(&path, &sub, out)?;
            } else if let Some(stem) = name.strip_suffix(".rs") {
                let mut m = at.to_vec();
                if !["mod", "lib", "main"].contains(&stem) {
                    m.push(stem.to_owned());
                }
                out.push((m, std::fs::read_to_string(&path)?));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(src, &[], &mut out)?;
    Ok(out)
}

/// Comments out of the way (`//` to the end of the line).
fn code_only(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// Every path this text names from `crate`, `super` or `self`, expanded
/// (`use crate::{a::b, c}` -> `crate::a::b`, `crate::c`).
fn paths(text: &str) -> Vec<Vec<String>> {
    let code = code_only(text);
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &code[i..];
        let head = ["crate::", "super::", "self::"].into_iter().find(|h| rest.starts_with(h));
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b':');
        match head {
            Some(h) if boundary => {
                let (trees, used) = tree(&rest[h.len()..]);
                for t in trees {
                    let mut p = vec![h.trim_end_matches("::").to_owned()];
                    p.extend(t);
                    out.push(p);
                }
                i += h.len() + used.max(1);
            }
            _ => i += 1,
        }
    }
    out
}

/// Parses a use tree (`a::b`, `a::{b, c::d}`, `*`) at the start of `s`;
/// returns its expanded paths and the bytes it took.
fn tree(s: &str) -> (Vec<Vec<String>>, usize) {
    let ident_len = s.bytes().take_while(|c| c.is_ascii_alphanumeric() || *c == b'_').count();
    if s.starts_with('{') {
        let mut depth = 0;
        let mut end = s.len();
        for (k, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k;
                        break;
                    }
                }
                _ => {}
            }
        }
        let inner = &s[1..end];
        let mut out = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        for (k, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.extend(tree(inner[start..k].trim()).0);
                    start = k + 1;
                }
                _ => {}
            }
        }
        out.extend(tree(inner[start..].trim()).0);
        return (out, end + 1);
    }
    if ident_len == 0 {
        return (vec![Vec::new()], 0);
    }
    let ident = s[..ident_len].to_owned();
    if s[ident_len..].starts_with("::") {
        let (subs, used) = tree(&s[ident_len + 2..]);
        let out = subs
            .into_iter()
            .map(|mut t| {
                t.insert(0, ident.clone());
                t
            })
            .collect();
        return (out, ident_len + 2 + used);
    }
    (vec![vec![ident]], ident_len)
}

/// The module a path points into: `crate`/`super`/`self` resolved against
/// `at`, cut to the longest prefix that is a module of the crate.
fn target(at: &[String], path: &[String], known: &BTreeSet<ModPath>) -> Option<ModPath> {
    let mut base: ModPath = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "super" => at[..at.len().checked_sub(1)?].to_vec(),
        _ => at.to_vec(),
    };
    let mut rest = &path[1..];
    while rest.first().is_some_and(|s| s == "super") {
        base.pop();
        rest = &rest[1..];
    }
    for seg in rest {
        let mut next = base.clone();
        next.push(seg.clone());
        if !known.contains(&next) {
            break;
        }
        base = next;
    }
    Some(base)
}

/// Edges between siblings: (parent, from child, to child).
fn sibling_edges(src: &Path) -> std::io::Result<BTreeSet<(ModPath, String, String)>> {
    let mods = modules(src)?;
    let mut known: BTreeSet<ModPath> = BTreeSet::new();
    for (m, _) in &mods {
        for k in 0..=m.len() {
            known.insert(m[..k].to_vec());
        }
    }
    let mut edges = BTreeSet::new();
    for (at, text) in &mods {
        for p in paths(text) {
            let Some(to) = target(at, &p, &known) else { continue };
            let common = at.iter().zip(&to).take_while(|(a, b)| a == b).count();
            // Nesting (one inside the other) is not an edge.
            if common == at.len() || common == to.len() {
                continue;
            }
            edges.insert((at[..common].to_vec(), at[common].clone(), to[common].clone()));
        }
    }
    Ok(edges)
}

/// Every cycle among siblings, as "parent: a -> b -> a".
pub fn cycles(src: &Path) -> std::io::Result<Vec<String>> {
    let edges = sibling_edges(src)?;
    let mut graphs: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (parent, a, b) in edges {
        graphs.entry(parent).or_default().entry(a).or_default().insert(b);
    }
    let mut out = Vec::new();
    for (parent, g) in &graphs {
        let mut reported: BTreeSet<BTreeSet<String>> = BTreeSet::new();
        for start in g.keys() {
            if let Some(cycle) = find_cycle(g, start)
                && reported.insert(cycle.iter().cloned().collect())
            {
                let at = if parent.is_empty() { "crate".to_owned() } else { parent.join("::") };
                out.push(format!("{at}: {}", cycle.join(" -> ")));
            }
        }
    }
    Ok(out)
}

/// A path from `start` back to itself, if any (breadth first: the shortest).
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut prev: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.to_owned()]);
    while let Some(n) = queue.pop_front() {
        for next in g.get(&n).into_iter().flatten() {
            if next == start {
                let mut path = vec![start.to_owned()];
                let mut at = n.clone();
                while at != start {
                    path.insert(1, at.clone());
                    at = prev[&at].clone();
                }
                path.push(start.to_owned());
                return Some(path);
            }
            if !prev.contains_key(next) {
                prev.insert(next.clone(), n.clone());
                queue.push_back(next.clone());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crate_src(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name).join("src")
    }

    #[test]
    fn use_trees_expand() {
        let p = paths("use crate::{a::b, c::{d, e::*}};\nlet x = super::f::g(); // crate::not");
        let want: Vec<Vec<String>> =
            [vec!["crate", "a", "b"], vec!["crate", "c", "d"], vec!["crate", "c", "e", ""], vec!["super", "f", "g"]]
                .iter()
                .map(|v| v.iter().map(|s| (*s).to_owned()).filter(|s| !s.is_empty()).collect())
                .collect();
        assert_eq!(p, want);
    }

    #[test]
    fn a_cycle_between_siblings_is_found() {
        let dir = std::env::temp_dir().join(format!("modgraph-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::write(dir.join("lib.rs"), "mod a; mod b;").unwrap();
        std::fs::write(dir.join("a/mod.rs"), "mod x; mod y; use self::x::X;").unwrap();
        std::fs::write(dir.join("a/x.rs"), "use super::y::Y; use crate::b::B;").unwrap();
        std::fs::write(dir.join("a/y.rs"), "use super::x::X; use super::Z;").unwrap();
        std::fs::write(dir.join("b.rs"), "fn f() { crate::a::x::g() }").unwrap();
        let found = cycles(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, ["crate: a -> b -> a", "a: x -> y -> x"]);
    }

    #[test]
    fn the_agent_has_no_import_cycle() {
        assert_eq!(cycles(&crate_src("agent")).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn the_kernel_crate_has_no_import_cycle() {
        assert_eq!(cycles(&crate_src("agent-ebpf")).unwrap(), Vec::<String>::new());
    }
}
