//! `modcycles`: modules that import each other, directly or in a circle.
//!
//! For every target of every workspace package (each is its own crate), the
//! module tree is read from the root file through its `mod x;` declarations.
//! A node is a file-level module; an inline module (`mod tests { .. }`)
//! belongs to the file that holds it. An edge `a -> b` is a path in `a` that
//! names something in `b`: `use crate::..`, `use super::..`, `use self::..`,
//! `use child::..`, and the same paths in expressions, types and macro
//! arguments. A child naming its parent (`super::X`) is an edge; a parent
//! declaring `mod child;` is not. Every strongly connected component with
//! more than one module is a cycle; any cycle makes the command fail.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use proc_macro2::{TokenStream, TokenTree};
use serde_json::Value;
use syn::visit::Visit;

/// Absolute module path, `crate` first.
type ModPath = Vec<String>;

/// Check every target of the workspace at `workspace`; fail on any cycle.
pub fn modcycles(workspace: &Path) -> anyhow::Result<()> {
    let mut cycles = 0;
    for (package, target, root) in targets(workspace)? {
        let graph = CrateGraph::read(&root)
            .with_context(|| format!("reading the modules of {package} ({target})"))?;
        let components = graph.cycles();
        if components.is_empty() {
            println!(
                "{package} ({target}): no cycles ({} modules, {} imports)",
                graph.modules.len(),
                graph.edge_count()
            );
        }
        for component in components {
            cycles += 1;
            println!(
                "{package} ({target}): CYCLE of {} modules:",
                component.len()
            );
            for from in &component {
                for to in graph.edges.get(from).into_iter().flatten() {
                    if component.contains(to) {
                        println!("    {} -> {}", from.join("::"), to.join("::"));
                    }
                }
            }
        }
    }
    if cycles > 0 {
        bail!("{cycles} import cycle(s) found");
    }
    Ok(())
}

/// (package, target description, root file) of every workspace target.
fn targets(workspace: &Path) -> anyhow::Result<Vec<(String, String, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(workspace)
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: Value = serde_json::from_slice(&output.stdout).context("cargo metadata")?;
    let mut targets = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let name = package["name"].as_str().unwrap_or("?");
        for target in package["targets"].as_array().into_iter().flatten() {
            let kind = target["kind"][0].as_str().unwrap_or("?");
            let target_name = target["name"].as_str().unwrap_or("?");
            let Some(src) = target["src_path"].as_str() else {
                continue;
            };
            targets.push((
                name.to_string(),
                format!("{kind} {target_name}"),
                PathBuf::from(src),
            ));
        }
    }
    targets.sort();
    Ok(targets)
}

/// A path found in a module, before resolution.
struct Reference {
    /// Real module (inline modules included) the path was written in.
    at: ModPath,
    segments: Vec<String>,
    /// Written in a `use` item (otherwise in code, where a first segment
    /// that a `use` of the same module brought in is not a module path).
    in_use: bool,
}

#[derive(Default)]
struct CrateGraph {
    /// File-level modules.
    modules: BTreeSet<ModPath>,
    /// Every module, inline ones included, to the file-level module holding it.
    file_of: HashMap<ModPath, ModPath>,
    /// Names brought into scope by `use` in each real module.
    imported: HashMap<ModPath, BTreeSet<String>>,
    references: Vec<Reference>,
    edges: BTreeMap<ModPath, BTreeSet<ModPath>>,
}

impl CrateGraph {
    fn read(root: &Path) -> anyhow::Result<CrateGraph> {
        let mut graph = CrateGraph::default();
        let dir = root.parent().unwrap_or(Path::new(".")).to_path_buf();
        graph.read_file(root, vec!["crate".to_string()], &dir)?;
        graph.resolve();
        Ok(graph)
    }

    /// Read one file-level module; `children_dir` is where its `mod x;` live.
    fn read_file(
        &mut self,
        file: &Path,
        module: ModPath,
        children_dir: &Path,
    ) -> anyhow::Result<()> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let parsed =
            syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
        self.modules.insert(module.clone());
        self.file_of.insert(module.clone(), module.clone());
        let file_dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        self.read_items(&parsed.items, &module, &module, children_dir, &file_dir)
    }

    fn read_items(
        &mut self,
        items: &[syn::Item],
        module: &ModPath,
        file_module: &ModPath,
        children_dir: &Path,
        file_dir: &Path,
    ) -> anyhow::Result<()> {
        let mut collector = Collector {
            module: module.clone(),
            references: Vec::new(),
            imported: BTreeSet::new(),
        };
        for item in items {
            match item {
                syn::Item::Mod(declaration) => {
                    let name = declaration.ident.to_string();
                    let mut child = module.clone();
                    child.push(name.clone());
                    for attr in &declaration.attrs {
                        collector.visit_attribute(attr);
                    }
                    match &declaration.content {
                        Some((_, inner)) => {
                            self.file_of.insert(child.clone(), file_module.clone());
                            self.read_items(
                                inner,
                                &child,
                                file_module,
                                &children_dir.join(&name),
                                file_dir,
                            )?;
                        }
                        None => {
                            let (file, grandchildren) =
                                module_file(declaration, &name, children_dir, file_dir)?;
                            self.read_file(&file, child, &grandchildren)?;
                        }
                    }
                }
                syn::Item::Use(item_use) => {
                    let mut paths = Vec::new();
                    flatten_use(&item_use.tree, &mut Vec::new(), &mut paths);
                    for (segments, bound) in paths {
                        if let Some(bound) = bound {
                            collector.imported.insert(bound);
                        }
                        collector.references.push(Reference {
                            at: module.clone(),
                            segments,
                            in_use: true,
                        });
                    }
                }
                other => collector.visit_item(other),
            }
        }
        self.references.append(&mut collector.references);
        self.imported
            .entry(module.clone())
            .or_default()
            .extend(collector.imported);
        Ok(())
    }

    fn resolve(&mut self) {
        let known: BTreeSet<ModPath> = self.file_of.keys().cloned().collect();
        for reference in &self.references {
            let Some(absolute) = self.absolute(reference, &known) else {
                continue;
            };
            // The longest prefix that is a module is what the path names.
            let Some(target) = (1..=absolute.len())
                .rev()
                .map(|n| absolute[..n].to_vec())
                .find(|prefix| known.contains(prefix))
            else {
                continue;
            };
            let from = self.file_of[&reference.at].clone();
            let to = self.file_of[&target].clone();
            if from != to {
                self.edges.entry(from).or_default().insert(to);
            }
        }
    }

    /// The absolute path a reference names, or `None` for another crate.
    fn absolute(&self, reference: &Reference, known: &BTreeSet<ModPath>) -> Option<ModPath> {
        let first = reference.segments.first()?;
        let mut base = reference.at.clone();
        let mut rest = reference.segments.as_slice();
        match first.as_str() {
            "crate" => {
                base = vec!["crate".to_string()];
                rest = &rest[1..];
            }
            "self" => rest = &rest[1..],
            "super" => {
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop();
                    rest = &rest[1..];
                }
                if base.is_empty() {
                    return None;
                }
            }
            name => {
                // A bare first segment is a child module (2018 paths), unless
                // in code it is a name a `use` of this module brought in.
                let mut child = base.clone();
                child.push(name.to_string());
                let imported = self
                    .imported
                    .get(&reference.at)
                    .is_some_and(|names| names.contains(name));
                if !known.contains(&child) || (!reference.in_use && imported) {
                    return None;
                }
            }
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    fn edge_count(&self) -> usize {
        self.edges.values().map(BTreeSet::len).sum()
    }

    /// Strongly connected components with more than one module (Tarjan).
    fn cycles(&self) -> Vec<Vec<ModPath>> {
        let nodes: Vec<&ModPath> = self.modules.iter().collect();
        let index_of: HashMap<&ModPath, usize> =
            nodes.iter().enumerate().map(|(i, m)| (*m, i)).collect();
        let successors: Vec<Vec<usize>> = nodes
            .iter()
            .map(|m| {
                self.edges
                    .get(*m)
                    .into_iter()
                    .flatten()
                    .filter_map(|to| index_of.get(to).copied())
                    .collect()
            })
            .collect();
        let mut tarjan = Tarjan {
            successors: &successors,
            index: vec![None; nodes.len()],
            low: vec![0; nodes.len()],
            on_stack: vec![false; nodes.len()],
            stack: Vec::new(),
            next: 0,
            components: Vec::new(),
        };
        for node in 0..nodes.len() {
            if tarjan.index[node].is_none() {
                tarjan.connect(node);
            }
        }
        let mut components: Vec<Vec<ModPath>> = tarjan
            .components
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|c| {
                let mut modules: Vec<ModPath> = c.into_iter().map(|i| nodes[i].clone()).collect();
                modules.sort();
                modules
            })
            .collect();
        components.sort();
        components
    }
}

/// The file of `mod name;` and the directory of its own children.
fn module_file(
    declaration: &syn::ItemMod,
    name: &str,
    children_dir: &Path,
    file_dir: &Path,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let explicit = declaration.attrs.iter().find_map(|attr| {
        if !attr.path().is_ident("path") {
            return None;
        }
        match &attr.meta {
            syn::Meta::NameValue(syn::MetaNameValue {
                value:
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(path),
                        ..
                    }),
                ..
            }) => Some(path.value()),
            _ => None,
        }
    });
    if let Some(path) = explicit {
        let file = file_dir.join(path);
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        return Ok((file, dir));
    }
    let flat = children_dir.join(format!("{name}.rs"));
    if flat.is_file() {
        return Ok((flat, children_dir.join(name)));
    }
    let nested = children_dir.join(name).join("mod.rs");
    if nested.is_file() {
        return Ok((nested, children_dir.join(name)));
    }
    bail!(
        "mod {name}: neither {} nor {} exists",
        flat.display(),
        nested.display()
    )
}

/// Every path of a use tree, with the name it binds (`None` for globs and
/// `self`, which bind nothing new to look for).
fn flatten_use(
    tree: &syn::UseTree,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) {
    match tree {
        syn::UseTree::Path(path) => {
            prefix.push(path.ident.to_string());
            flatten_use(&path.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(name) => {
            let ident = name.ident.to_string();
            if ident == "self" {
                out.push((prefix.clone(), prefix.last().cloned()));
            } else {
                let mut path = prefix.clone();
                path.push(ident.clone());
                out.push((path, Some(ident)));
            }
        }
        syn::UseTree::Rename(rename) => {
            let mut path = prefix.clone();
            path.push(rename.ident.to_string());
            out.push((path, Some(rename.rename.to_string())));
        }
        syn::UseTree::Glob(_) => out.push((prefix.clone(), None)),
        syn::UseTree::Group(group) => {
            for item in &group.items {
                flatten_use(item, prefix, out);
            }
        }
    }
}

/// Collects the paths written in code of one module (not in nested modules,
/// which [`CrateGraph::read_items`] reads on their own).
struct Collector {
    module: ModPath,
    references: Vec<Reference>,
    imported: BTreeSet<String>,
}

impl Collector {
    fn push(&mut self, segments: Vec<String>) {
        if segments.len() > 1 {
            self.references.push(Reference {
                at: self.module.clone(),
                segments,
                in_use: false,
            });
        }
    }

    /// `a::b::c` runs in macro arguments, which syn leaves as tokens.
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            if let TokenTree::Group(group) = &tokens[i] {
                self.scan_tokens(group.stream());
                i += 1;
                continue;
            }
            let preceded_by_colons = i >= 1 && is_colon(&tokens[i - 1]);
            let TokenTree::Ident(first) = &tokens[i] else {
                i += 1;
                continue;
            };
            let mut segments = vec![first.to_string()];
            let mut j = i + 1;
            while j + 1 < tokens.len() && is_colon(&tokens[j]) && is_colon(&tokens[j + 1]) {
                match tokens.get(j + 2) {
                    Some(TokenTree::Ident(next)) => {
                        segments.push(next.to_string());
                        j += 3;
                    }
                    _ => break,
                }
            }
            if !preceded_by_colons {
                self.push(segments);
            }
            i = j.max(i + 1);
        }
    }
}

fn is_colon(token: &TokenTree) -> bool {
    matches!(token, TokenTree::Punct(p) if p.as_char() == ':')
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            self.push(
                path.segments
                    .iter()
                    .map(|segment| segment.ident.to_string())
                    .collect(),
            );
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.scan_tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }

    // Modules and `use` items nested in functions are rare; an inline
    // module in a block is still read as part of this module.
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut paths = Vec::new();
        flatten_use(&item.tree, &mut Vec::new(), &mut paths);
        for (segments, _) in paths {
            self.references.push(Reference {
                at: self.module.clone(),
                segments,
                in_use: true,
            });
        }
    }
}

struct Tarjan<'a> {
    successors: &'a [Vec<usize>],
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    components: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    fn connect(&mut self, node: usize) {
        self.index[node] = Some(self.next);
        self.low[node] = self.next;
        self.next += 1;
        self.stack.push(node);
        self.on_stack[node] = true;
        for &next in &self.successors[node] {
            match self.index[next] {
                None => {
                    self.connect(next);
                    self.low[node] = self.low[node].min(self.low[next]);
                }
                Some(index) if self.on_stack[next] => {
                    self.low[node] = self.low[node].min(index);
                }
                Some(_) => {}
            }
        }
        if Some(self.low[node]) == self.index[node] {
            let mut component = Vec::new();
            while let Some(member) = self.stack.pop() {
                self.on_stack[member] = false;
                component.push(member);
                if member == node {
                    break;
                }
            }
            self.components.push(component);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph_of(files: &[(&str, &str)]) -> CrateGraph {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        CrateGraph::read(&dir.path().join("lib.rs")).unwrap()
    }

    fn names(cycles: Vec<Vec<ModPath>>) -> Vec<Vec<String>> {
        cycles
            .into_iter()
            .map(|c| c.into_iter().map(|m| m.join("::")).collect())
            .collect()
    }

    #[test]
    fn a_child_using_its_parent_that_uses_it_is_a_cycle() {
        let graph = graph_of(&[
            ("lib.rs", "mod store;"),
            (
                "store/mod.rs",
                "mod registry;\npub use registry::Registry;\npub fn now() {}",
            ),
            ("store/registry.rs", "use super::now;\npub struct Registry;"),
        ]);
        assert_eq!(
            names(graph.cycles()),
            vec![vec!["crate::store", "crate::store::registry"]]
        );
    }

    #[test]
    fn declaring_a_module_and_tests_using_super_are_not_edges() {
        let graph = graph_of(&[
            ("lib.rs", "mod a;\nmod b;\nfn root() { a::f(); }"),
            (
                "a.rs",
                "pub fn f() { crate::b::g(); }\n#[cfg(test)] mod tests { use super::*; }",
            ),
            ("b.rs", "mod c;\npub fn g() {}"),
            ("b/c.rs", "pub fn h() {}"),
        ]);
        assert!(graph.cycles().is_empty());
        assert_eq!(graph.edge_count(), 2, "{:?}", graph.edges);
    }

    #[test]
    fn paths_in_macro_arguments_and_imported_names_count() {
        let graph = graph_of(&[
            ("lib.rs", "mod a;\nmod b;"),
            ("a.rs", "fn f() { println!(\"{}\", crate::b::X); }"),
            ("b.rs", "use crate::a as other;\npub const X: u8 = 1;"),
        ]);
        assert_eq!(names(graph.cycles()), vec![vec!["crate::a", "crate::b"]]);
    }
}
