//! Tidy checks: the invariants of docs/ARCHITECTURE.md that a grep can hold, run as ordinary
//! tests (rust-analyzer's habit). Each names the invariant it enforces.

use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![repo().join(dir)];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = fs::read_to_string(&p).unwrap();
                out.push((p, text));
            }
        }
    }
    assert!(!out.is_empty(), "no sources under {dir}");
    out
}

fn name(p: &Path) -> String {
    p.strip_prefix(repo()).unwrap_or(p).display().to_string()
}

/// The code of a file without its `#[cfg(test)]` module (tests may do what the code may not).
fn non_test(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

#[test]
fn only_the_store_module_names_rusqlite() {
    for (p, text) in sources("node/src")
        .into_iter()
        .chain(sources("signer/src"))
        .chain(sources("protocol/src"))
        .chain(sources("assess/src"))
    {
        // One store module per database: the node's state, the feed database.
        if p.ends_with("node/src/store.rs") || p.ends_with("assess/src/feedstore.rs") {
            continue;
        }
        assert!(
            !text.contains("rusqlite"),
            "{} names rusqlite: SQLite is reached only through store.rs (node) and feedstore.rs (assess)",
            name(&p)
        );
    }
}

#[test]
fn unsafe_code_is_one_mallopt_block_in_the_node_binary() {
    let mut blocks = 0;
    for (p, text) in sources("node/src")
        .into_iter()
        .chain(sources("signer/src"))
        .chain(sources("protocol/src"))
        .chain(sources("assess/src"))
    {
        let n =
            text.matches("unsafe {").count() + text.matches("unsafe fn").count() + text.matches("unsafe impl").count();
        if n == 0 {
            continue;
        }
        assert!(p.ends_with("node/src/main.rs"), "{} has unsafe code: only main.rs's mallopt may", name(&p));
        blocks += n;
        assert!(text.contains("// SAFETY:"), "main.rs's unsafe block has no SAFETY comment");
    }
    assert!(blocks <= 1, "{blocks} unsafe blocks in node/src/main.rs, one is allowed");
}

#[test]
fn the_store_exposes_no_raw_sql_entry_point() {
    let store = fs::read_to_string(repo().join("node/src/store.rs")).unwrap();
    for bad in ["pub async fn call", "pub fn call", "pub fn connection", "pub conn"] {
        assert!(!store.contains(bad), "store.rs exposes `{bad}`: callers must use typed methods");
    }
}

#[test]
fn no_node_module_imports_the_top_module() {
    for (p, text) in sources("node/src") {
        if p.ends_with("main.rs") || p.ends_with("node.rs") {
            continue;
        }
        assert!(
            !text.contains("crate::node::") && !text.contains("crate::node;") && !text.contains("crate::node::{"),
            "{} imports crate::node: modules get handles (shared.rs, lifecycle.rs), never the wiring",
            name(&p)
        );
    }
}

#[test]
fn protocol_does_no_io() {
    for (p, text) in sources("protocol/src") {
        for bad in [
            "std::fs",
            "std::net",
            "std::process",
            "tokio::",
            "libp2p::",
            "use libp2p",
            "std::io::Read",
            "std::io::Write",
        ] {
            assert!(!text.contains(bad), "{} uses {bad}: protocol is pure", name(&p));
        }
    }
}

#[test]
fn release_states_are_never_compared_as_strings() {
    for (p, text) in sources("node/src").into_iter().chain(sources("signer/src")).chain(sources("tests/it")) {
        if p.ends_with("tidy.rs") {
            continue;
        }
        for bad in ["state == \"", "state.as_str()", "state: String", "\"rolled-back\"", "\"installed\" =>"] {
            // (A migration test may spell the legacy strings it migrates.)
            assert!(
                !non_test(&text).contains(bad),
                "{} has `{bad}`: release states are typed (ReleaseState)",
                name(&p)
            );
        }
    }
}

#[test]
fn the_bundle_layout_is_defined_once_in_protocol() {
    for (p, text) in sources("node/src").into_iter().chain(sources("signer/src")) {
        for file in ["\"manifest.lpm\"", "\"yank.lpy\"", "\"approvals\"", ".lpa\""] {
            assert!(
                !non_test(&text).contains(file),
                "{} spells the bundle layout ({file}): use BundleLayout",
                name(&p)
            );
        }
    }
}

#[test]
fn only_the_fleet_harness_defines_how_an_admin_or_an_endpoint_starts() {
    let mut found = Vec::new();
    for (path, text) in sources("tests/it") {
        if path.file_name().is_some_and(|f| f == "fleet.rs") {
            continue;
        }
        for f in ["admin", "endpoint"].map(|f| format!("fn {f}(")) {
            if text.contains(&f) {
                found.push(format!("{}: {f}", name(&path)));
            }
        }
    }
    assert!(found.is_empty(), "tests start nodes through tests/it/fleet.rs, not their own helpers: {found:?}");
}

#[test]
fn files_a_client_names_are_opened_only_through_fsmode() {
    // control.rs reads bundles a local client points at; Library::import reads their files.
    let control = fs::read_to_string(repo().join("node/src/control.rs")).unwrap();
    let library = fs::read_to_string(repo().join("node/src/library.rs")).unwrap();
    let import = library.split("pub fn import(").nth(1).and_then(|t| t.split("\n    }\n").next()).unwrap();
    assert!(import.contains("fsmode::open_regular"), "Library::import must open through fsmode::open_regular");
    for (file, code) in [("node/src/control.rs", non_test(&control)), ("Library::import", import)] {
        for opener in ["fs::read(", "File::open(", "OpenOptions::new()"] {
            assert!(
                !code.contains(opener),
                "{file} opens a file with {opener}: use fsmode::open_regular / read_capped"
            );
        }
    }
}

#[test]
fn nothing_shells_out_to_kill() {
    for (p, text) in sources("node/src").into_iter().chain(sources("signer/src")).chain(sources("tests/it")) {
        if p.ends_with("tidy.rs") {
            continue;
        }
        assert!(
            !text.contains("Command::new(\"kill\")") && !text.contains("\"kill\", \"-"),
            "{} runs kill(1): signal process groups with nix::sys::signal::killpg behind kill_group",
            name(&p)
        );
    }
}

#[test]
fn every_node_state_is_explained_in_operations() {
    let ops = fs::read_to_string(repo().join("docs/OPERATIONS.md")).unwrap();
    for state in lanpatch_protocol::ReleaseState::every() {
        let label = match state {
            lanpatch_protocol::ReleaseState::Waiting(lanpatch_protocol::WaitReason::NotBefore(_)) => {
                "waiting (not before T)".to_string()
            }
            s => s.label(),
        };
        let row = format!("| `{label}` | {} |", state.next_step().unwrap_or("nothing"));
        assert!(ops.contains(&row), "docs/OPERATIONS.md's state table lacks (or disagrees with the code on) {row}");
    }
}

#[test]
fn the_signers_main_only_dispatches_each_subcommand_to_its_module() {
    let main = fs::read_to_string(repo().join("signer/src/main.rs")).unwrap();
    // main.rs may print only the error of a failed command (eprintln! in main()).
    assert_eq!(main.matches("println!").count(), main.matches("eprintln!").count(), "signer/src/main.rs prints");
    for banned in ["print!", "bundle::", "fleet::", "std::fs::", "keys::load_secret", "serde_json"] {
        assert!(
            !main.contains(banned),
            "signer/src/main.rs uses {banned}: move that flow into the subcommand's module"
        );
    }
    let lines = main.lines().count();
    assert!(lines < 200, "signer/src/main.rs has {lines} lines: it should only parse and dispatch");
    // Every subcommand variant dispatches to a module's run (or its named entry point).
    let dispatch = main.split("match cli.cmd {").nth(1).expect("run() matches cli.cmd");
    for arm in dispatch.lines().filter(|l| l.trim_start().starts_with("Cmd::")) {
        assert!(arm.contains("::run(") || arm.contains("::write_man_pages("), "not a dispatch to a module: {arm}");
    }
}

#[test]
fn every_node_and_signer_module_is_in_the_architecture_code_map() {
    let arch = fs::read_to_string(repo().join("docs/ARCHITECTURE.md")).unwrap();
    for (p, _) in sources("node/src")
        .into_iter()
        .chain(sources("signer/src"))
        .chain(sources("protocol/src"))
        .chain(sources("assess/src"))
    {
        let file = p.file_name().unwrap().to_string_lossy().into_owned();
        if file == "lib.rs" {
            continue;
        }
        assert!(arch.contains(&file), "docs/ARCHITECTURE.md's code map does not mention {}", name(&p));
    }
}

#[test]
fn tests_use_the_repositorys_lab_never_one_outside_it() {
    // The needle is built, so this file does not spell the path it forbids.
    let outside = ["..", "shared"].join("/");
    for (p, text) in sources("tests/it") {
        assert!(!text.contains(&outside), "{} reaches outside the repository", name(&p));
    }
    for script in ["bench/fanout.sh", "scripts/test", ".ci/run"] {
        let text = fs::read_to_string(repo().join(script)).unwrap();
        assert!(!text.contains(&outside), "{script} reaches outside the repository");
    }
}

#[test]
fn no_expression_takes_the_same_std_mutex_twice() {
    // `s.trust().a || s.trust().b` keeps the first guard alive while taking the second: a
    // deadlock (it happened twice). Take the guard once, in a block.
    for (p, text) in sources("node/src") {
        for piece in non_test(&text).split([';', '{', '}']) {
            for lock in [".trust()", ".progress()"] {
                assert!(
                    piece.matches(lock).count() <= 1,
                    "{} takes {lock} twice in one expression: {}",
                    name(&p),
                    piece.trim()
                );
            }
        }
    }
}

#[test]
fn every_test_the_docs_cite_exists() {
    // A test named in THREAT-MODEL.md or ARCHITECTURE.md as the proof of a defence or an
    // invariant must exist: a renamed or deleted test would leave a claim without its proof.
    let mut fns = std::collections::HashSet::new();
    for dir in ["protocol", "node/src", "signer/src", "assess/src", "tests/it"] {
        for (_, text) in sources(dir) {
            for part in text.split("fn ").skip(1) {
                let ident: String = part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                fns.insert(ident);
            }
        }
    }
    let mut cited = 0;
    for doc in ["docs/THREAT-MODEL.md", "docs/ARCHITECTURE.md"] {
        let text = fs::read_to_string(repo().join(doc)).unwrap();
        for quoted in text.split('`').skip(1).step_by(2) {
            // Test names are long snake_case words, perhaps behind a module path.
            let last = quoted.rsplit("::").next().unwrap_or(quoted);
            let is_test_name = last.len() > 24
                && last.matches('_').count() >= 3
                && last.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if is_test_name {
                cited += 1;
                assert!(fns.contains(last), "{doc} cites `{quoted}`, which is not a function of this repository");
            }
        }
    }
    assert!(cited > 20, "found only {cited} cited tests: the docs' format changed and this check no longer sees them");
}

#[test]
fn metric_labels_hold_only_typed_values_never_strings() {
    // A label built from peer text would let a peer grow the number of series without bound.
    let text = fs::read_to_string(repo().join("node/src/metrics.rs")).unwrap();
    let code = non_test(&text);
    let mut sets = 0;
    for part in code.split("EncodeLabelSet)]").skip(1) {
        let body = part.split('}').next().unwrap_or("");
        sets += 1;
        for field in body.lines().filter(|l| l.contains(':')) {
            assert!(
                !field.contains("String") && !field.contains("&str") || field.contains("&'static str"),
                "metrics.rs: a label field that can hold arbitrary text: {}",
                field.trim()
            );
        }
    }
    assert!(sets >= 5, "found only {sets} label sets in metrics.rs: did the module change shape?");
    // Other modules bump metrics through Metrics' typed methods; none builds a label itself.
    for (path, text) in sources("node/src") {
        if !path.ends_with("metrics.rs") {
            assert!(!non_test(&text).contains("prometheus_client"), "{} uses prometheus_client directly", name(&path));
        }
    }
}

#[test]
fn the_console_never_marks_text_as_pre_escaped() {
    // maud escapes every `(value)`; PreEscaped (or a raw string handed to the response as HTML)
    // would let a node's text become markup.
    let (_, text) = sources("node/src").into_iter().find(|(p, _)| p.ends_with("console.rs")).expect("console.rs");
    for bad in ["PreEscaped", "maud::Render", "Html(format!", "Html(String::from"] {
        assert!(
            !text.contains(bad),
            "node/src/console.rs uses {bad}: node text must only reach pages through maud's escaping"
        );
    }
}

/// ARCHITECTURE.md invariant: every connection passes the door. The swarm's TCP and relay
/// transports are built with `door::Door` as their security upgrade, and no other module builds
/// a Noise upgrade of its own (which would be a way around the certificate exchange).
#[test]
fn every_transport_is_built_with_the_door() {
    for (p, text) in sources("node/src") {
        if p.ends_with("node/src/door.rs") {
            continue;
        }
        assert!(
            !non_test(&text).contains("noise::Config::new"),
            "{} builds a Noise upgrade itself: connections are secured only by door::Door",
            name(&p)
        );
    }
    let net = fs::read_to_string(repo().join("node/src/net.rs")).unwrap();
    let code = non_test(&net);
    let builder = code.split(".with_tcp(").nth(1).expect("net.rs builds a TCP transport");
    let tcp = builder.split(".with_relay_client(").next().unwrap_or("");
    assert!(tcp.contains("Door::new"), "the TCP transport is not secured by door::Door");
    let relay = builder.split(".with_relay_client(").nth(1).expect("net.rs builds a relay transport");
    assert!(
        relay.split(')').next().unwrap_or("").contains("Door::new"),
        "the relay transport is not secured by door::Door"
    );
    assert_eq!(code.matches("SwarmBuilder::").count(), 1, "net.rs builds one swarm");
}

/// The modules a node source file imports (`crate::a::b` and, in a folder module, `super::x`
/// paths outside comments and tests), each as the path of the file that defines it.
fn node_imports(file: &Path, text: &str, modules: &std::collections::HashSet<String>) -> Vec<String> {
    let src = repo().join("node/src");
    let rel = file.strip_prefix(&src).unwrap().with_extension("");
    let mut own: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    if own.last().is_some_and(|l| l == "mod") {
        own.pop();
    }
    let parent: Vec<String> = own[..own.len().saturating_sub(1)].to_vec();
    let code: String =
        non_test(text).lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
        for (at, _) in code.match_indices(prefix) {
            let path: String = code[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut segs = base.clone();
            segs.extend(path.split("::").filter(|s| !s.is_empty()).map(str::to_string));
            // The longest prefix of the path that is a module of the node.
            while !segs.is_empty() && !modules.contains(&segs.join("::")) {
                segs.pop();
            }
            let target = segs.join("::");
            if !target.is_empty() && target != own.join("::") && !out.contains(&target) {
                out.push(target);
            }
        }
    }
    out
}

#[test]
fn no_import_cycle_among_the_node_modules() {
    let src = repo().join("node/src");
    let files: Vec<(PathBuf, String)> =
        sources("node/src").into_iter().filter(|(p, _)| !p.ends_with("lib.rs") && !p.ends_with("main.rs")).collect();
    let module = |p: &Path| {
        let rel = p.strip_prefix(&src).unwrap().with_extension("");
        let mut segs: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
        if segs.last().is_some_and(|l| l == "mod") {
            segs.pop();
        }
        segs.join("::")
    };
    let modules: std::collections::HashSet<String> = files.iter().map(|(p, _)| module(p)).collect();
    let graph: std::collections::BTreeMap<String, Vec<String>> =
        files.iter().map(|(p, text)| (module(p), node_imports(p, text, &modules))).collect();
    assert!(graph["downloads::owner"].contains(&"shared".to_string()), "the import scan found nothing: {graph:?}");
    // Depth-first search; a module met again while on the stack closes a cycle.
    fn visit<'a>(
        m: &'a str,
        graph: &'a std::collections::BTreeMap<String, Vec<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut std::collections::HashSet<&'a str>,
    ) {
        if let Some(at) = stack.iter().position(|s| *s == m) {
            panic!(
                "import cycle among the node's modules: {} -> {m} (docs/ARCHITECTURE.md: handles sit below Shared, \
                 their owners above it)",
                stack[at..].join(" -> ")
            );
        }
        if !done.insert(m) {
            return;
        }
        stack.push(m);
        for next in graph.get(m).into_iter().flatten() {
            visit(next, graph, stack, done);
        }
        stack.pop();
    }
    let mut done = std::collections::HashSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}

/// The lines of each function in `text` (test modules left out): (name, lines from `fn` to its
/// closing brace at the same indentation).
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = before_test_modules(text).lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let body = line.trim_start();
        let indent = line.len() - body.len();
        let head = ["pub ", "pub(crate) ", "pub(super) ", "const ", "async ", "unsafe "]
            .iter()
            .fold(body, |b, p| b.strip_prefix(p).unwrap_or(b));
        let Some(rest) = head.strip_prefix("fn ") else { continue };
        if line.trim_end().ends_with(';') {
            continue;
        }
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let close = format!("{}}}", " ".repeat(indent));
        let end = lines[i + 1..].iter().position(|l| l.trim_end() == close).map(|e| i + 1 + e);
        out.push((name, end.map_or(usize::MAX, |e| e - i + 1)));
    }
    out
}

/// The code of a file before its first test module (`#[cfg(test)]` on a `mod`).
fn before_test_modules(text: &str) -> &str {
    text.split("#[cfg(test)]\nmod").next().unwrap_or(text)
}

/// Whether a line declares a function (`fn name(` or `fn name<`), comments aside.
fn declares_fn(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    code.match_indices("fn ").any(|(i, _)| {
        let before_ok = i == 0 || code[..i].ends_with([' ', '(']);
        let rest = &code[i + 3..];
        let name_len = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        before_ok && name_len > 0 && rest[name_len..].starts_with(['(', '<'])
    })
}

#[test]
fn no_function_in_the_download_code_is_over_80_lines() {
    let mut long = Vec::new();
    let mut seen = 0;
    for (path, text) in sources("node/src/downloads") {
        let found = function_lengths(&text);
        let declared = before_test_modules(&text).lines().filter(|l| declares_fn(l)).count();
        assert_eq!(found.len(), declared, "{}: the scan found {} of {declared} functions", name(&path), found.len());
        for (f, n) in found {
            seen += 1;
            if n > 80 {
                long.push(format!("{}: fn {f} is {n} lines", name(&path)));
            }
        }
    }
    assert!(seen > 20, "found only {seen} functions: the scan is broken");
    assert!(long.is_empty(), "functions too long to read whole (split them by event or step):\n{}", long.join("\n"));
    // The scan itself: a 90-line function is caught.
    let sample = format!("fn big() {{\n{}}}\n", "    x();\n".repeat(88));
    assert_eq!(function_lengths(&sample), vec![("big".to_string(), 90)]);
}
