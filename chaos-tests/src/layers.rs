//! An architecture check for one crate (in the spirit of ArchUnit and cargo-modules'
//! cycle check): reads the crate's own source, builds the import graph between its
//! top-level modules, and holds it to a layer table so imports keep flowing one way.
//!
//! ```no_run
//! use strait_chaos::layers::{check, Layer};
//! let report = check(
//!     std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
//!     &[
//!         Layer { name: "vocabulary", modules: &["error"], why: "imports nothing of ours" },
//!         Layer { name: "logic", modules: &["app"], why: "uses the vocabulary" },
//!     ],
//! );
//! report.assert_clean();
//! ```
//!
//! What counts as an import: every `crate::a::...` path anywhere in code (`use`,
//! `pub use`, grouped `use crate::{a, b::c}`, inline paths), and every `super::` path,
//! resolved against the file's module path including inline `mod name { ... }` blocks.
//! Comments and string literals are blanked first, so doc links and messages never
//! count. `self::` paths and paths inside one top-level module are internal. The
//! crate root (`lib.rs`, `main.rs`, `src/bin/`) declares every module, so its own
//! imports are not checked; imports of items defined in the root count as edges to
//! a pseudo-module named `crate`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One layer of the table; layers are given lowest first, and a module may import
/// its own layer and the layers below it.
#[derive(Debug, Clone, Copy)]
pub struct Layer {
    pub name: &'static str,
    /// Top-level module names (`src/NAME.rs` or `src/NAME/`), or `crate` for root items.
    pub modules: &'static [&'static str],
    /// One line saying why this layer sits where it does (printed with the report).
    pub why: &'static str,
}

/// Imports from one top-level module to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// Every place the import was seen, as `src/file.rs:line`, in file order.
    pub sites: Vec<String>,
}

/// An import from a lower layer to a higher one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upward {
    pub from: String,
    pub to: String,
    pub from_layer: &'static str,
    pub to_layer: &'static str,
    pub sites: Vec<String>,
}

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The `src` directory read.
    pub src: PathBuf,
    /// `.rs` files read (root files included).
    pub files: usize,
    /// Top-level modules found, plus `crate` when a root item is imported.
    pub modules: Vec<String>,
    /// Module-to-module imports, sorted by (from, to).
    pub edges: Vec<Edge>,
    /// One concrete cycle per import loop, as module names ending where they began.
    pub loops: Vec<Vec<String>>,
    /// Every module in each loop (its strongly connected component), in `loops` order.
    pub loop_members: Vec<Vec<String>>,
    pub upward: Vec<Upward>,
    /// Modules (or `crate`) found in no layer of the table.
    pub unlayered: Vec<String>,
    /// Table entries naming no module of the crate, as (module, layer).
    pub missing: Vec<(String, &'static str)>,
    /// Modules the table places in more than one layer.
    pub doubled: Vec<String>,
    /// The table, kept for printing.
    pub layers: Vec<Layer>,
}

/// Reads every `.rs` file under `src` (the crate's src dir), builds the import graph
/// between top-level modules and checks it against `layers` (lowest layer first).
/// Panics only if `src` cannot be read.
pub fn check(src: &Path, layers: &[Layer]) -> Report {
    let mut files = Vec::new();
    collect_rs(src, &mut files);
    files.sort();
    assert!(
        !files.is_empty(),
        "layers: no .rs files under {}",
        src.display()
    );

    let mut units: BTreeSet<String> = BTreeSet::new();
    let mut has_root = false;
    let mut parsed = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(src).expect("collected under src");
        let module = module_path(rel);
        match module.first() {
            Some(unit) => {
                units.insert(unit.clone());
            }
            None => has_root = true,
        }
        parsed.push((rel.to_path_buf(), module));
    }

    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (path, (rel, module)) in files.iter().zip(&parsed) {
        let Some(unit) = module.first() else {
            continue; // the crate root declares everything; its imports are not checked
        };
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("layers: cannot read {}: {e}", path.display()));
        for (target, line) in imports(&text, module, &units) {
            if &target == unit {
                continue;
            }
            let site = format!("src/{}:{line}", rel.display());
            edges.entry((unit.clone(), target)).or_default().push(site);
        }
    }

    let mut modules: BTreeSet<String> = units.clone();
    if edges.keys().any(|(_, to)| to == ROOT) {
        modules.insert(ROOT.to_string());
    }
    let edges: Vec<Edge> = edges
        .into_iter()
        .map(|((from, to), sites)| Edge { from, to, sites })
        .collect();

    // Where each module sits in the table.
    let mut layer_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut doubled = Vec::new();
    let mut missing = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        for &m in layer.modules {
            if layer_of.insert(m, i).is_some() {
                doubled.push(m.to_string());
            }
            let exists = units.contains(m) || (m == ROOT && has_root);
            if !exists {
                missing.push((m.to_string(), layer.name));
            }
        }
    }
    let unlayered = modules
        .iter()
        .filter(|m| !layer_of.contains_key(m.as_str()))
        .cloned()
        .collect();
    let upward = edges
        .iter()
        .filter_map(|e| {
            let (&i, &j) = (layer_of.get(e.from.as_str())?, layer_of.get(e.to.as_str())?);
            (j > i).then(|| Upward {
                from: e.from.clone(),
                to: e.to.clone(),
                from_layer: layers[i].name,
                to_layer: layers[j].name,
                sites: e.sites.clone(),
            })
        })
        .collect();

    let (loops, loop_members) = loops(&modules, &edges).into_iter().unzip();
    Report {
        src: src.to_path_buf(),
        files: files.len(),
        loops,
        loop_members,
        modules: modules.into_iter().collect(),
        edges,
        upward,
        unlayered,
        missing,
        doubled,
        layers: layers.to_vec(),
    }
}

/// The pseudo-module standing for items defined in the crate root.
const ROOT: &str = "crate";

impl Report {
    /// Prints what was counted: files, modules, layers, edges, loops, upward imports.
    pub fn print(&self) {
        println!(
            "layers: {} — {} files, {} modules, {} edges ({} imports), {} loops, {} upward imports",
            self.src.display(),
            self.files,
            self.modules.len(),
            self.edges.len(),
            self.edges.iter().map(|e| e.sites.len()).sum::<usize>(),
            self.loops.len(),
            self.upward.len()
        );
        println!("layers, lowest first:");
        for l in &self.layers {
            println!("  {:<14} {:<40} {}", l.name, l.modules.join(", "), l.why);
        }
        println!("edges (from -> to: imports, first at):");
        for e in &self.edges {
            println!(
                "  {} -> {}: {} ({})",
                e.from,
                e.to,
                e.sites.len(),
                e.sites[0]
            );
        }
        for p in self.problems() {
            println!("problem: {p}");
        }
    }

    /// One line per problem: each import loop, each upward import, each module in no
    /// layer, each table entry naming no module, each module placed twice.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (cycle, members) in self.loops.iter().zip(&self.loop_members) {
            out.push(format!(
                "import loop: {} ({} modules in the loop: {})",
                cycle.join(" -> "),
                members.len(),
                members.join(", ")
            ));
        }
        for u in &self.upward {
            out.push(format!(
                "upward import: {} (layer {}) imports {} (layer {}) at {}",
                u.from,
                u.from_layer,
                u.to,
                u.to_layer,
                u.sites.join(", ")
            ));
        }
        for m in &self.unlayered {
            let used_at = self
                .edges
                .iter()
                .filter(|e| &e.to == m)
                .flat_map(|e| e.sites.first())
                .next();
            match used_at {
                Some(site) if m == ROOT => out.push(format!(
                    "module in no layer: crate (root items imported, e.g. at {site})"
                )),
                _ => out.push(format!("module in no layer: {m}")),
            }
        }
        for (m, layer) in &self.missing {
            out.push(format!(
                "layer {layer} names module {m}, which does not exist"
            ));
        }
        for m in &self.doubled {
            out.push(format!("module {m} is in more than one layer"));
        }
        out
    }

    /// [`Report::print`], then panics listing [`Report::problems`] if there are any.
    pub fn assert_clean(&self) {
        self.print();
        let problems = self.problems();
        if !problems.is_empty() {
            panic!(
                "{} layering problem(s) in {}:\n  {}",
                problems.len(),
                self.src.display(),
                problems.join("\n  ")
            );
        }
    }
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("layers: cannot read {}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file relative to `src`; empty for the crate root.
fn module_path(rel: &Path) -> Vec<String> {
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return Vec::new();
    }
    if parts.len() == 1 && (parts[0] == "lib.rs" || parts[0] == "main.rs") {
        return Vec::new();
    }
    let mut module: Vec<String> = parts
        .iter()
        .map(|p| p.strip_suffix(".rs").unwrap_or(p).to_string())
        .collect();
    if module.last().is_some_and(|m| m == "mod") {
        module.pop();
    }
    module
}

/// Copies `text` with comments and the insides of string and char literals replaced
/// by spaces (newlines kept, so line numbers still hold).
fn blank_comments_and_strings(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (i == 0 || !ident(c[i - 1]) || (c[i - 1] == 'b' && (i < 2 || !ident(c[i - 2]))))
            && raw_string_hashes(&c, i + 1).is_some()
        {
            let hashes = raw_string_hashes(&c, i + 1).unwrap_or(0);
            // r, the hashes and the opening quote stay; the body is blanked.
            let body = i + 1 + hashes + 1;
            out.extend(&c[i..body]);
            i = body;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    out.extend(&c[i..i + 1 + hashes]);
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(c[i]));
                i += 1;
            }
        } else if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < c.len() {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                    if i < c.len() {
                        out.push(blank(c[i]));
                        i += 1;
                    }
                } else if c[i] == '"' {
                    out.push('"');
                    i += 1;
                    break;
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == '\'' && next == Some('\\') {
            // An escaped char literal: '\n', '\'', '\u{1F600}'.
            out.push('\'');
            i += 1;
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '\'' {
                out.push(blank(c[i]));
                i += 1;
            }
            if i < c.len() {
                out.push('\'');
                i += 1;
            }
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            // A plain char literal such as '"' or '{'; otherwise it is a lifetime.
            out.push_str("' '");
            i += 3;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// After an `r` at `at - 1`: the number of `#` before an opening quote, if this is a
/// raw string (and not a raw identifier such as `r#type`).
fn raw_string_hashes(c: &[char], at: usize) -> Option<usize> {
    let mut n = 0;
    while c.get(at + n) == Some(&'#') {
        n += 1;
    }
    (c.get(at + n) == Some(&'"')).then_some(n)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

fn tokens(text: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            // A raw identifier `r#name` is the name.
            if word == "r"
                && c.get(i) == Some(&'#')
                && c.get(i + 1).is_some_and(|x| x.is_alphabetic())
            {
                continue;
            }
            out.push((Tok::Ident(word), line));
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Path, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// The top-level modules (or [`ROOT`]) that one file imports, with line numbers.
/// `module` is the file's module path; `units` the crate's top-level modules.
fn imports(text: &str, module: &[String], units: &BTreeSet<String>) -> Vec<(String, usize)> {
    let toks = tokens(&blank_comments_and_strings(text));
    let is = |i: usize, t: &Tok| toks.get(i).is_some_and(|(x, _)| x == t);
    let ident = |i: usize| match toks.get(i) {
        Some((Tok::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    // The first segment after a root-relative prefix names the module, or a root item.
    let unit_of = |name: &str| {
        if units.contains(name) {
            name.to_string()
        } else {
            ROOT.to_string()
        }
    };

    let mut out = Vec::new();
    let mut depth = 0usize;
    // Inline `mod name { ... }` blocks open around this point, with the depth inside each.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut pending_mod: Option<String> = None;
    let mut i = 0;
    while i < toks.len() {
        let (tok, line) = &toks[i];
        match tok {
            Tok::Punct('{') => {
                depth += 1;
                if let Some(name) = pending_mod.take() {
                    inline.push((name, depth));
                }
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Punct(';') => pending_mod = None,
            Tok::Ident(w) if w == "mod" => {
                if let (Some(name), true) = (ident(i + 1), is(i + 2, &Tok::Punct('{'))) {
                    pending_mod = Some(name.to_string());
                }
            }
            Tok::Ident(w)
                if (w == "crate" || w == "super")
                    && is(i + 1, &Tok::Path)
                    && !(i > 0 && is(i - 1, &Tok::Path)) =>
            {
                // Resolve the prefix to a module path.
                let mut base: Vec<String> = if w == "crate" {
                    Vec::new()
                } else {
                    module
                        .iter()
                        .cloned()
                        .chain(inline.iter().map(|(n, _)| n.clone()))
                        .collect()
                };
                let mut j = i;
                if w == "crate" {
                    j += 2;
                } else {
                    while ident(j) == Some("super") && is(j + 1, &Tok::Path) {
                        base.pop();
                        j += 2;
                    }
                }
                if let Some(first) = base.first() {
                    out.push((first.clone(), *line));
                } else if let Some(name) = ident(j) {
                    if name != "self" {
                        out.push((unit_of(name), *line));
                    }
                } else if is(j, &Tok::Punct('*')) {
                    out.push((ROOT.to_string(), *line));
                } else if is(j, &Tok::Punct('{')) {
                    // A group: each item's first segment, at the group's own level.
                    let mut level = 0usize;
                    let mut item_start = true;
                    let mut k = j;
                    while k < toks.len() {
                        let (t, l) = &toks[k];
                        match t {
                            Tok::Punct('{') => {
                                level += 1;
                                if level == 1 {
                                    item_start = true;
                                }
                            }
                            Tok::Punct('}') => {
                                level -= 1;
                                if level == 0 {
                                    break;
                                }
                            }
                            Tok::Punct(',') if level == 1 => item_start = true,
                            Tok::Ident(name) if level == 1 && item_start => {
                                if name != "self" {
                                    out.push((unit_of(name), *l));
                                }
                                item_start = false;
                            }
                            Tok::Punct('*') if level == 1 && item_start => {
                                out.push((ROOT.to_string(), *l));
                                item_start = false;
                            }
                            _ => item_start = false,
                        }
                        k += 1;
                    }
                    // The group's braces are counted by the main loop as it walks on.
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// One concrete cycle for every strongly connected component with more than one
/// module (Tarjan's algorithm, then a breadth-first walk back to the start).
/// Each import loop: one concrete cycle and every module in it.
fn loops(modules: &BTreeSet<String>, edges: &[Edge]) -> Vec<(Vec<String>, Vec<String>)> {
    let names: Vec<&str> = modules.iter().map(String::as_str).collect();
    let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut adj: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    for e in edges {
        if let (Some(&a), Some(&b)) = (index.get(e.from.as_str()), index.get(e.to.as_str())) {
            adj[a].push(b);
        }
    }

    struct Tarjan<'a> {
        adj: &'a [Vec<usize>],
        next: usize,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        stack: Vec<usize>,
        on_stack: Vec<bool>,
        sccs: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.next);
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in &self.adj[v] {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    scc.push(w);
                    if w == v {
                        break;
                    }
                }
                self.sccs.push(scc);
            }
        }
    }
    let n = names.len();
    let mut t = Tarjan {
        adj: &adj,
        next: 0,
        index: vec![None; n],
        low: vec![0; n],
        stack: Vec::new(),
        on_stack: vec![false; n],
        sccs: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }

    let mut out = Vec::new();
    for mut scc in t.sccs.into_iter().filter(|s| s.len() > 1) {
        scc.sort();
        let inside: BTreeSet<usize> = scc.iter().copied().collect();
        let start = scc[0];
        // Shortest walk from start back to start, staying inside the component.
        let mut prev: BTreeMap<usize, usize> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        'bfs: while let Some(v) = queue.pop_front() {
            for &w in &adj[v] {
                if !inside.contains(&w) {
                    continue;
                }
                if w == start {
                    prev.insert(start, v);
                    break 'bfs;
                }
                if let std::collections::btree_map::Entry::Vacant(e) = prev.entry(w) {
                    e.insert(v);
                    queue.push_back(w);
                }
            }
        }
        let mut cycle = vec![names[start].to_string()];
        let mut v = prev[&start];
        while v != start {
            cycle.push(names[v].to_string());
            v = prev[&v];
        }
        cycle.push(names[start].to_string());
        cycle.reverse();
        out.push((cycle, scc.iter().map(|&i| names[i].to_string()).collect()));
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `files` (path under src, contents) to a fresh temp dir; returns it and src.
    fn tree(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        for (path, text) in files {
            let p = src.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        (dir, src)
    }

    fn edge_list(r: &Report) -> Vec<(String, String, usize)> {
        r.edges
            .iter()
            .map(|e| (e.from.clone(), e.to.clone(), e.sites.len()))
            .collect()
    }

    const LOW_HIGH: &[Layer] = &[
        Layer {
            name: "low",
            modules: &["a"],
            why: "bottom",
        },
        Layer {
            name: "high",
            modules: &["b"],
            why: "top",
        },
    ];

    #[test]
    fn a_loop_is_found_with_its_cycle() {
        let (_d, src) = tree(&[
            ("lib.rs", "pub mod a; pub mod b; pub mod c;"),
            ("a.rs", "use crate::b::B;\npub struct A;"),
            ("b/mod.rs", "mod inner;\npub struct B;"),
            ("b/inner.rs", "use crate::c::C;"),
            ("c.rs", "pub struct C(crate::a::A);"),
        ]);
        let r = check(&src, &[]);
        assert_eq!(r.files, 5);
        assert_eq!(r.modules, vec!["a", "b", "c"]);
        assert_eq!(
            r.loops,
            vec![vec!["a", "b", "c", "a"]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()]
        );
        let problems = r.problems();
        assert!(
            problems.contains(
                &"import loop: a -> b -> c -> a (3 modules in the loop: a, b, c)".to_string()
            ),
            "{problems:?}"
        );
        // The edge from b is found in its child file, counted for the folder as one unit.
        assert_eq!(r.edges[1].from, "b");
        assert_eq!(r.edges[1].sites, vec!["src/b/inner.rs:1"]);
    }

    #[test]
    fn an_upward_import_is_found_and_a_downward_one_is_not() {
        let (_d, src) = tree(&[
            ("lib.rs", "pub mod a; pub mod b;"),
            ("a.rs", "\n\nfn f() { let _ = crate::b::VALUE; }"),
            ("b.rs", "pub const VALUE: u8 = 1;"),
        ]);
        let r = check(&src, LOW_HIGH);
        assert_eq!(r.upward.len(), 1);
        assert_eq!(
            (r.upward[0].from_layer, r.upward[0].to_layer),
            ("low", "high")
        );
        assert_eq!(r.upward[0].sites, vec!["src/a.rs:3"]);
        assert!(r.loops.is_empty());

        let (_d, src) = tree(&[
            ("lib.rs", "pub mod a; pub mod b;"),
            ("a.rs", "pub struct A;"),
            ("b.rs", "use crate::a::A;"),
        ]);
        let r = check(&src, LOW_HIGH);
        assert!(r.problems().is_empty(), "{:?}", r.problems());
        r.assert_clean();
    }

    #[test]
    fn super_in_a_nested_test_module_is_not_an_edge() {
        let (_d, src) = tree(&[
            ("lib.rs", "pub mod a; pub mod x;"),
            (
                "x.rs",
                "pub fn f() {}\n#[cfg(test)]\nmod tests {\n    use super::*;\n    mod deeper { use super::super::f; }\n}\n",
            ),
            ("a/mod.rs", "pub mod b;"),
            (
                "a/b.rs",
                "#[cfg(test)]\nmod tests { use super::super::*; use super::*; }\nuse super::x;",
            ),
        ]);
        let r = check(&src, &[]);
        // Every super:: above resolves inside its own top-level module (`use super::x`
        // at the top of a/b.rs is `a::x`), so nothing crosses a module boundary.
        assert_eq!(edge_list(&r), vec![]);

        // super:: from a top-level file reaches the root, and through it other modules.
        let (_d, src) = tree(&[
            ("lib.rs", "pub mod a; pub mod x; pub const K: u8 = 1;"),
            ("x.rs", "use super::a::A;\nuse super::K;"),
            ("a.rs", "pub struct A;"),
        ]);
        let r = check(&src, &[]);
        assert_eq!(
            edge_list(&r),
            vec![
                ("x".to_string(), "a".to_string(), 1),
                ("x".to_string(), "crate".to_string(), 1)
            ]
        );
        assert!(r
            .problems()
            .iter()
            .any(|p| p.starts_with("module in no layer: crate")));
    }

    #[test]
    fn comments_and_strings_mentioning_crate_paths_are_not_edges() {
        let (_d, src) = tree(&[
            ("lib.rs", "pub mod a; pub mod x;"),
            (
                "x.rs",
                concat!(
                    "//! See [`crate::a::A`].\n",
                    "/// Uses crate::a::A.\n",
                    "// crate::a::A\n",
                    "/* crate::a::A /* nested crate::a::A */ still crate::a::A */\n",
                    "const S: &str = \"crate::a::A \\\" crate::a::A\";\n",
                    "const R: &str = r#\"crate::a::A \" crate::a::A\"#;\n",
                    "const Q: char = '\"'; const L: &'static str = \"crate::a::A\";\n",
                    "fn f<'a>(_: &'a str) {}\n",
                    "pub(crate) fn g() {}\n",
                ),
            ),
            ("a.rs", "pub struct A;"),
        ]);
        let r = check(&src, &[]);
        assert_eq!(edge_list(&r), vec![]);
    }

    #[test]
    fn a_grouped_use_makes_two_edges() {
        let (_d, src) = tree(&[
            ("lib.rs", "pub mod a; pub mod b; pub mod x;"),
            (
                "x.rs",
                "use crate::{\n    a,\n    b::{self, c::D},\n};\nuse crate::x::Y;\n",
            ),
            ("a.rs", ""),
            ("b/mod.rs", "pub mod c;"),
            ("b/c.rs", "pub struct D;"),
        ]);
        let r = check(&src, &[]);
        assert_eq!(
            edge_list(&r),
            vec![
                ("x".to_string(), "a".to_string(), 1),
                ("x".to_string(), "b".to_string(), 1)
            ]
        );
        assert_eq!(r.edges[1].sites, vec!["src/x.rs:3"]);
    }

    #[test]
    fn table_entries_and_modules_are_held_to_each_other() {
        let (_d, src) = tree(&[
            ("lib.rs", "pub mod a; pub mod b;"),
            ("a.rs", ""),
            ("b.rs", ""),
        ]);
        let r = check(
            &src,
            &[Layer {
                name: "only",
                modules: &["a", "gone"],
                why: "",
            }],
        );
        assert_eq!(
            r.problems(),
            vec![
                "module in no layer: b".to_string(),
                "layer only names module gone, which does not exist".to_string()
            ]
        );
    }
}
