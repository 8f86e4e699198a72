//! The crate's layering, checked from its source text (`cargo test --test layering`).
//!
//! Every file under `src/` is read, and every path it names inside the crate (`use crate::..`,
//! `use super::..`, `use self::..`, a `use` of a child module, and `crate::a::b` / `super::a`
//! written in code) is resolved to the file that defines it. Two rules are then checked:
//!
//! 1. **No circles between files.** No file reaches itself through a chain of imports, a
//!    parent `mod.rs` and its children included: a parent whose code uses a child while the
//!    child uses something the parent defines is a circle (move the shared part into a file of
//!    its own). Test code does not count here: `#[cfg(test)]` modules, inline or in files of
//!    their own, may import any sibling (a test that drives two files together does not make
//!    them depend on each other in the library). The circles not broken yet are listed, exactly,
//!    in [`KNOWN_CIRCLES`].
//! 2. **Floors.** The top-level modules form floors, [`FLOORS`], lowest first: a module imports
//!    only from its own floor and the floors below. [`LEAVES`] import nothing else of the crate
//!    and anyone may import them. [`FACADES`] are for users outside the crate: they may import
//!    anything and nothing inside the crate imports them (the crate root, `lib.rs`, is one too).
//!    Test code counts here: a lower floor's tests do not reach up either. A new top-level
//!    module fails the test until it is given its place in one of the three lists.
//!
//! **Re-exports and declarations.** `mod child;` declares, it does not import. A `pub use` (any
//! visibility) publishes a name; it is not a use either. An import is followed through
//! re-exports (and through private `use` items of a parent that a child names by `super::X`)
//! to the file that defines the name, so a parent `mod.rs` that says `pub use child::X` while
//! the child imports something the parent defines is no circle. When the re-exporting file's
//! own code also names `X`, the `pub use` counts as a use as well.
//!
//! The reading is plain text, good enough for rustfmt-formatted code: comments and string
//! literals are blanked, inline modules are found by their `mod name {` line and end at the
//! `}` with the same indentation, and `#[cfg(test)]` is recognised on modules and `use` items.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

/// The floors, lowest first: a module may import from its own floor and the ones below it.
const FLOORS: &[&str] = &[
    "sys", "mem", "dev", "stack", "chunk", "net", "metrics", "serve", "s3",
];
/// Modules that import nothing else of the crate; every module may import them.
const LEAVES: &[&str] = &["proto", "time", "copies"];
/// Modules for users outside the crate: they may import anything, nothing inside imports them.
const FACADES: &[&str] = &["host", "testing"];

/// Circles that exist and are yet to be broken, each by moving what the files share into a
/// file of its own (as `mem/error.rs` and `mem/page.rs` did). A circle is excused only while
/// its files are exactly these: the test fails when one grows, shrinks or is gone, so the list
/// is kept true.
const KNOWN_CIRCLES: &[&[&str]] = &[];

#[test]
fn src_has_no_circles_and_no_upward_imports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    read_rs_files(&root.join("src"), root, &mut files);
    assert!(
        files.len() > 20,
        "found only {} files under src/",
        files.len()
    );
    let problems = check(&files, KNOWN_CIRCLES);
    assert!(
        problems.is_empty(),
        "the layering (tests/layering.rs) is broken:\n{}",
        problems.join("\n")
    );
}

// The checker checks something: small trees that break each rule, and the cases it lets pass.

fn tree(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect()
}

#[test]
fn finds_a_circle_between_files() {
    let files = tree(&[
        ("src/lib.rs", "pub mod proto;\n"),
        ("src/proto/mod.rs", "mod a;\nmod b;\nmod c;\n"),
        ("src/proto/a.rs", "use super::b::B;\npub struct A;\n"),
        ("src/proto/b.rs", "pub struct B(crate::proto::c::C);\n"),
        (
            "src/proto/c.rs",
            "use super::{a::A, b::B};\npub struct C;\n",
        ),
    ]);
    let problems = check(&files, &[]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .contains("src/proto/a.rs:1 -> src/proto/b.rs:1 -> src/proto/c.rs:1 -> src/proto/a.rs"),
        "{problems:?}"
    );
    // A known circle is excused while its files are exactly those listed...
    let known: &[&str] = &["src/proto/a.rs", "src/proto/b.rs", "src/proto/c.rs"];
    assert_eq!(check(&files, &[known]), Vec::<String>::new());
    // ...and reported once it is gone, so the list does not outlive it.
    let mut files = files;
    files[4].1 = "pub struct C;\n".into();
    let problems = check(&files, &[known]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("is gone"), "{problems:?}");
}

#[test]
fn finds_an_upward_import_also_in_tests() {
    let files = tree(&[
        ("src/lib.rs", "pub mod sys;\npub mod mem;\npub mod time;\n"),
        (
            "src/sys.rs",
            "use crate::time::Instant;\n#[cfg(test)]\nmod tests {\n    use crate::mem::Pool;\n}\n",
        ),
        ("src/mem.rs", "pub struct Pool;\n"),
        (
            "src/time.rs",
            "pub struct Instant;\nfn f() { crate::mem::Pool; }\n",
        ),
    ]);
    let problems = check(&files, &[]);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("src/sys.rs:4"), "{problems:?}");
    assert!(problems[0].contains("higher floor"), "{problems:?}");
    assert!(problems[1].contains("src/time.rs:2"), "{problems:?}");
    assert!(problems[1].contains("leaf"), "{problems:?}");
}

#[test]
fn reexports_and_tests_make_no_circle() {
    let files = tree(&[
        ("src/lib.rs", "pub mod proto;\npub use proto::A;\n"),
        (
            "src/proto/mod.rs",
            "mod a;\n#[cfg(test)]\nmod tests;\npub use a::A;\npub const LIMIT: u8 = 1;\n\
             #[cfg(test)]\nmod inline {\n    use super::a::A;\n}\n",
        ),
        (
            "src/proto/a.rs",
            "use super::LIMIT;\npub struct A; // crate::proto::tests\n",
        ),
        (
            "src/proto/tests.rs",
            "use super::a::A;\nuse crate::A as B;\n",
        ),
    ]);
    assert_eq!(check(&files, &[]), Vec::<String>::new());
    // ...but a parent whose own code names what it re-exports does use it.
    let mut files = files;
    files[1].1 += "pub const SIZE: usize = std::mem::size_of::<A>();\n";
    let problems = check(&files, &[]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("src/proto/mod.rs:4 -> src/proto/a.rs:1 -> src/proto/mod.rs"),
        "{problems:?}"
    );
}

#[test]
fn comments_and_strings_are_blanked_line_for_line() {
    let text =
        "let a = \"x \\\n    y\"; // crate::no\n/* crate::no\n */ let c = '\"'; crate::yes\n";
    let lines = strip(text);
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines[3].contains("crate::yes"), "{lines:?}");
    assert!(!lines.concat().contains("crate::no"), "{lines:?}");
}

// ------------------------------------------------------------------------------------------------
// Reading the files

fn read_rs_files(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_rs_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((rel, text));
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`; `src/lib.rs` is the crate root.
fn module_of(rel: &str) -> Vec<String> {
    let inner = rel.strip_prefix("src/").expect("a file under src/");
    let inner = inner.strip_suffix(".rs").unwrap();
    let mut segs: Vec<String> = inner.split('/').map(str::to_owned).collect();
    if segs.last().is_some_and(|s| s == "mod" || s == "lib") {
        segs.pop();
    }
    segs
}

/// The text with comments removed and the contents of string and char literals blanked; one
/// output line per input line.
fn strip(text: &str) -> Vec<String> {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !ident(c[i - 1]) || (c[i - 1] == 'b' && (i < 2 || !ident(c[i - 2]))))
        {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            out.push_str("\"\"");
            i = j + 1;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                if c[i] == '\n' {
                    out.push('\n');
                }
                i += 1;
            }
        } else if c[i] == '"' {
            out.push_str("\"\"");
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1; // the escaped character (a newline of a line continuation, too)
                }
                if c.get(i) == Some(&'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
        } else if c[i] == '\'' && (next == Some('\\') || c.get(i + 2) == Some(&'\'')) {
            // A char literal (a lifetime has no closing quote).
            out.push_str("' '");
            i += if next == Some('\\') { 3 } else { 2 };
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out.split('\n').map(str::to_owned).collect()
}

/// One path a file names inside the crate.
struct Ref {
    /// Index of the file it is in.
    file: usize,
    /// 1-based line.
    line: usize,
    /// The module it is written in (the file's, or an inline module's inside it).
    module: Vec<String>,
    /// The path as written (`super::a::B`); a glob ends in `*`.
    path: Vec<String>,
    /// The name it binds (a `use` item's last segment or its `as` name).
    alias: Option<String>,
    /// A `pub use` (of any visibility).
    reexport: bool,
    /// In test code.
    test: bool,
}

struct File {
    rel: String,
    module: Vec<String>,
    /// Words of the file's own code, outside `use` items and test modules.
    words: BTreeSet<String>,
}

struct Crate {
    files: Vec<File>,
    /// Every module (files and inline modules) and the file it is in.
    modules: BTreeMap<Vec<String>, usize>,
    /// Names bound by `use` items: (module, name) -> the path as written there.
    aliases: BTreeMap<(Vec<String>, String), Vec<String>>,
    refs: Vec<Ref>,
    /// Modules under `#[cfg(test)]`.
    test_modules: BTreeSet<Vec<String>>,
}

fn read_crate(sources: &[(String, String)]) -> Crate {
    let mut krate = Crate {
        files: Vec::new(),
        modules: BTreeMap::new(),
        aliases: BTreeMap::new(),
        refs: Vec::new(),
        test_modules: BTreeSet::new(),
    };
    for (idx, (rel, text)) in sources.iter().enumerate() {
        let module = module_of(rel);
        krate.modules.insert(module.clone(), idx);
        let mut file = File {
            rel: rel.clone(),
            module: module.clone(),
            words: BTreeSet::new(),
        };
        read_file(idx, &module, &strip(text), &mut krate, &mut file.words);
        krate.files.push(file);
    }
    // A file is test code when its module, or one around it, was declared under cfg(test).
    let test_files: Vec<bool> = krate
        .files
        .iter()
        .map(|f| (0..=f.module.len()).any(|n| krate.test_modules.contains(&f.module[..n])))
        .collect();
    for r in &mut krate.refs {
        r.test |= test_files[r.file];
    }
    krate
}

fn read_file(
    idx: usize,
    file_module: &[String],
    lines: &[String],
    krate: &mut Crate,
    words: &mut BTreeSet<String>,
) {
    // Inline modules open here: (indentation, name, test).
    let mut inline: Vec<(usize, String, bool)> = Vec::new();
    let mut test_attr = false;
    let mut attr_depth = 0i32;
    let mut n = 0;
    while n < lines.len() {
        let line = &lines[n];
        let text = line.trim();
        let indent = line.len() - line.trim_start().len();
        n += 1;
        if text.is_empty() {
            continue;
        }
        if let Some(&(open, _, _)) = inline.last() {
            if indent == open && text.starts_with('}') {
                inline.pop();
                continue;
            }
        }
        let module: Vec<String> = file_module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(_, name, _)| name.clone()))
            .collect();
        let in_test = inline.iter().any(|&(_, _, t)| t);
        // Attributes, possibly over several lines.
        if attr_depth > 0 || text.starts_with("#[") {
            test_attr |= text.contains("cfg(test") || text.contains("cfg(all(test");
            attr_depth += text.matches('[').count() as i32 - text.matches(']').count() as i32;
            continue;
        }
        let item_test = std::mem::take(&mut test_attr);
        let (vis, rest) = split_visibility(text);
        if let Some(decl) = rest.strip_prefix("mod ") {
            let name: String = decl
                .chars()
                .take_while(|&c| c.is_alphanumeric() || c == '_')
                .collect();
            let mut path = module.clone();
            path.push(name.clone());
            if item_test {
                krate.test_modules.insert(path.clone());
            }
            if decl.trim_end().ends_with('{') {
                krate.modules.insert(path, idx);
                inline.push((indent, name, item_test));
            }
            continue;
        }
        if let Some(tree) = rest.strip_prefix("use ") {
            let first = n;
            let mut tree = tree.to_owned();
            while !tree.contains(';') && n < lines.len() {
                tree.push_str(lines[n].trim());
                n += 1;
            }
            let tree = tree.split(';').next().unwrap();
            let mut paths = Vec::new();
            expand_use(tree, &[], &mut paths);
            for (path, alias) in paths {
                if alias != "*" {
                    krate
                        .aliases
                        .insert((module.clone(), alias.clone()), path.clone());
                }
                krate.refs.push(Ref {
                    file: idx,
                    line: first,
                    module: module.clone(),
                    path,
                    alias: Some(alias),
                    reexport: vis,
                    test: in_test || item_test,
                });
            }
            continue;
        }
        // Code: paths written out, and the words it uses.
        for path in inline_paths(text) {
            krate.refs.push(Ref {
                file: idx,
                line: n,
                module: module.clone(),
                path,
                alias: None,
                reexport: false,
                test: in_test,
            });
        }
        if !in_test {
            for word in text.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                if !word.is_empty() {
                    words.insert(word.to_owned());
                }
            }
        }
    }
}

/// Splits `pub(crate) use x` into (true, "use x").
fn split_visibility(text: &str) -> (bool, &str) {
    let Some(rest) = text.strip_prefix("pub") else {
        return (false, text);
    };
    if let Some(rest) = rest.strip_prefix(' ') {
        return (true, rest);
    }
    if rest.starts_with('(') {
        if let Some(close) = rest.find(')') {
            return (true, rest[close + 1..].trim_start());
        }
    }
    (false, text)
}

/// Expands a use tree (`a::{b, c::D as E, self}`) into (path, bound name) pairs.
fn expand_use(tree: &str, prefix: &[String], out: &mut Vec<(Vec<String>, String)>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    let mut path = prefix.to_vec();
    if let Some(open) = tree.find('{') {
        let close = tree.rfind('}').expect("a closing brace in a use tree");
        path.extend(segments(&tree[..open]));
        let inner = &tree[open + 1..close];
        let mut depth = 0;
        let mut start = 0;
        for (i, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand_use(&inner[start..i], &path, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand_use(&inner[start..], &path, out);
        return;
    }
    let (name, alias) = match tree.split_once(" as ") {
        Some((name, alias)) => (name, Some(alias.trim().to_owned())),
        None => (tree, None),
    };
    path.extend(segments(name));
    if path.last().is_some_and(|s| s == "self") {
        path.pop();
    }
    let Some(last) = path.last().cloned() else {
        return;
    };
    out.push((path, alias.unwrap_or(last)));
}

fn segments(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// `crate::a::b`, `super::a` and `self::a` paths written in a line of code.
fn inline_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            let before = at.checked_sub(1).map(|i| bytes[i]);
            if before
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b':')
            {
                continue;
            }
            let path: String = text[at..]
                .chars()
                .take_while(|&c| c.is_alphanumeric() || c == '_' || c == ':')
                .collect();
            out.push(segments(&path).collect());
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Resolving paths to files

impl Crate {
    /// The absolute path (from the crate root) of `path` written in `module`; `None` for paths
    /// outside the crate (std, dependencies) and local names.
    fn absolute(&self, module: &[String], path: &[String], depth: usize) -> Option<Vec<String>> {
        let first = path.first()?;
        let mut base = module.to_vec();
        let rest = match first.as_str() {
            "crate" => {
                base.clear();
                &path[1..]
            }
            "self" => &path[1..],
            "super" => {
                let supers = path.iter().take_while(|s| *s == "super").count();
                for _ in 0..supers {
                    base.pop()?;
                }
                &path[supers..]
            }
            name => {
                let mut child = base.clone();
                child.push(name.to_owned());
                if self.modules.contains_key(&child) {
                    path
                } else {
                    // A name a `use` bound here (`use super::wire; use wire::X;`).
                    let bound = self.aliases.get(&(base.clone(), name.to_owned()))?;
                    if depth > 16 || bound.as_slice() == path {
                        return None;
                    }
                    let mut abs = self.absolute(module, bound, depth + 1)?;
                    abs.extend(path[1..].iter().cloned());
                    return Some(abs);
                }
            }
        };
        base.extend(rest.iter().filter(|s| *s != "*").cloned());
        Some(base)
    }

    /// The file that defines the item `abs` names: the innermost module on its path, followed
    /// through the `use` items that bind the next segment there.
    fn locate(&self, abs: &[String], depth: usize) -> usize {
        let k = (0..=abs.len())
            .rev()
            .find(|&k| self.modules.contains_key(&abs[..k]))
            .expect("the crate root is a module");
        if k < abs.len() && depth < 16 {
            let key = (abs[..k].to_vec(), abs[k].clone());
            if let Some(bound) = self.aliases.get(&key) {
                if let Some(mut target) = self.absolute(&abs[..k], bound, 0) {
                    target.extend(abs[k + 1..].iter().cloned());
                    if target.as_slice() != abs {
                        return self.locate(&target, depth + 1);
                    }
                }
            }
        }
        self.modules[&abs[..k]]
    }
}

/// One import between two files: from `files[from]` at `line` to `files[to]`.
struct Edge {
    from: usize,
    line: usize,
    to: usize,
    test: bool,
    /// Counts for the floors only (a re-export that the file does not use itself).
    floors_only: bool,
}

fn edges(krate: &Crate) -> Vec<Edge> {
    let mut out = Vec::new();
    for r in &krate.refs {
        let Some(abs) = krate.absolute(&r.module, &r.path, 0) else {
            continue;
        };
        let to = krate.locate(&abs, 0);
        if to == r.file {
            continue;
        }
        let unused_reexport = r.reexport
            && !r
                .alias
                .as_ref()
                .is_some_and(|a| krate.files[r.file].words.contains(a));
        out.push(Edge {
            from: r.file,
            line: r.line,
            to,
            test: r.test,
            floors_only: unused_reexport,
        });
    }
    out
}

// ------------------------------------------------------------------------------------------------
// The two rules

fn check(sources: &[(String, String)], known: &[&[&str]]) -> Vec<String> {
    let krate = read_crate(sources);
    let edges = edges(&krate);
    let mut problems = circles(&krate, &edges, known);
    problems.extend(floors(&krate, &edges));
    problems
}

/// Each set of files that reach each other, with one circle through it, unless it is one of
/// `known`; and each of `known` that is not such a set.
fn circles(krate: &Crate, edges: &[Edge], known: &[&[&str]]) -> Vec<String> {
    let n = krate.files.len();
    // The first import line from each file to each other file.
    let mut next: Vec<BTreeMap<usize, usize>> = vec![BTreeMap::new(); n];
    for e in edges.iter().filter(|e| !e.test && !e.floors_only) {
        next[e.from].entry(e.to).or_insert(e.line);
    }
    let reach = |from: usize| -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([from]);
        while let Some(f) = queue.pop_front() {
            for &t in next[f].keys() {
                if seen.insert(t) {
                    queue.push_back(t);
                }
            }
        }
        seen
    };
    let reaches: Vec<BTreeSet<usize>> = (0..n).map(reach).collect();
    let mut reported = BTreeSet::new();
    let mut found = Vec::new();
    let mut out = Vec::new();
    for f in 0..n {
        if !reaches[f].contains(&f) || reported.contains(&f) {
            continue;
        }
        let members: BTreeSet<usize> = (0..n)
            .filter(|&g| reaches[f].contains(&g) && reaches[g].contains(&f))
            .collect();
        reported.extend(members.iter().copied());
        let names: Vec<&str> = members
            .iter()
            .map(|&g| krate.files[g].rel.as_str())
            .collect();
        found.push(names.clone());
        if known.contains(&names.as_slice()) {
            continue;
        }
        // The shortest way from f back to f, each step with its import line.
        let mut back: BTreeMap<usize, usize> = BTreeMap::new();
        let mut queue = VecDeque::from([f]);
        'search: while let Some(g) = queue.pop_front() {
            for &t in next[g].keys() {
                if t == f {
                    back.insert(usize::MAX, g);
                    break 'search;
                }
                if members.contains(&t) && !back.contains_key(&t) {
                    back.insert(t, g);
                    queue.push_back(t);
                }
            }
        }
        let mut chain = vec![f];
        let mut at = back[&usize::MAX];
        while at != f {
            chain.push(at);
            at = back[&at];
        }
        chain[1..].reverse();
        chain.push(f);
        let mut steps = Vec::new();
        for w in chain.windows(2) {
            steps.push(format!("{}:{}", krate.files[w[0]].rel, next[w[0]][&w[1]]));
        }
        steps.push(krate.files[f].rel.clone());
        out.push(format!(
            "circle between {}: {}",
            names.join(", "),
            steps.join(" -> ")
        ));
    }
    for k in known {
        if !found.iter().any(|f| f.as_slice() == *k) {
            out.push(format!(
                "known circle {k:?} is gone or has changed: update KNOWN_CIRCLES"
            ));
        }
    }
    out
}

/// Imports that go up a floor, out of a leaf, or into a facade.
fn floors(krate: &Crate, edges: &[Edge]) -> Vec<String> {
    let top = |f: usize| krate.files[f].module.first().cloned();
    let mut out = Vec::new();
    let mut unknown = BTreeSet::new();
    for f in 0..krate.files.len() {
        if let Some(t) = top(f) {
            let known = FLOORS.contains(&t.as_str())
                || LEAVES.contains(&t.as_str())
                || FACADES.contains(&t.as_str());
            if !known && unknown.insert(t.clone()) {
                out.push(format!(
                    "module `{t}` is in no floor: add it to FLOORS, LEAVES or FACADES \
                     in tests/layering.rs"
                ));
            }
        }
    }
    for e in edges {
        let (Some(from), to) = (top(e.from), top(e.to)) else {
            continue; // the crate root may import anything
        };
        let to_name = to.clone().unwrap_or_else(|| "the crate root".into());
        if to.as_deref() == Some(from.as_str()) {
            continue;
        }
        let at = format!(
            "{}:{} imports {}",
            krate.files[e.from].rel, e.line, krate.files[e.to].rel
        );
        let floor = |m: &str| FLOORS.iter().position(|f| *f == m);
        let problem = if FACADES.contains(&from.as_str()) {
            None
        } else if to.is_none() || FACADES.contains(&to_name.as_str()) {
            Some(format!(
                "{at}: `{to_name}` is a facade for users outside the crate"
            ))
        } else if LEAVES.contains(&from.as_str()) {
            Some(format!(
                "{at}: `{from}` is a leaf and imports nothing else of the crate"
            ))
        } else if LEAVES.contains(&to_name.as_str()) {
            None
        } else {
            match (floor(&from), floor(&to_name)) {
                (Some(a), Some(b)) if b > a => Some(format!(
                    "{at}: `{to_name}` is on a higher floor than `{from}` ({})",
                    FLOORS.join(" -> ")
                )),
                _ => None,
            }
        };
        out.extend(problem);
    }
    out
}
