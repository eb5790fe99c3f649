//! The dependency rules of ARCHITECTURE.md, checked on the source: which module may name which.
//! A module "names" another when its code (comments excluded) mentions `crate::<module>` or, for
//! its own submodules, `super::`. Top-level modules form no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The file's code without `//` comments (doc comments mention modules freely).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to (`channel` for src/channel/session.rs).
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Top-level modules each module names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files(&src()) {
        let m = module_of(&f);
        if m == "lib" || m == "main" {
            continue;
        }
        let text = code(&f);
        let used = g.entry(m.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != m && src().join(format!("{name}.rs")).exists()
                || src().join(&name).is_dir() && name != m
            {
                used.insert(name);
            }
        }
    }
    g
}

fn names(module: &str, other: &str) -> bool {
    graph().get(module).is_some_and(|s| s.contains(other))
}

#[test]
fn the_graph_sees_real_dependencies() {
    // Guards the checks below against a parser that finds nothing.
    assert!(names("channel", "services"));
    assert!(names("api", "services"));
    assert!(names("services", "exec"));
}

#[test]
fn the_adapters_never_name_each_other() {
    assert!(!names("api", "channel"), "api names channel");
    assert!(!names("channel", "api"), "channel names api");
}

#[test]
fn services_never_name_an_adapter() {
    for adapter in ["api", "channel"] {
        assert!(!names("services", adapter), "services names {adapter}");
    }
}

#[test]
fn engines_know_nothing_of_adapters_services_or_transports() {
    for engine in [
        "exec", "policy", "docker", "agent", "audit", "auth", "text", "status", "metrics",
        "systemd", "signals",
    ] {
        for upper in ["api", "channel", "services"] {
            assert!(!names(engine, upper), "{engine} names {upper}");
        }
    }
    for dir in ["exec", "policy", "docker"] {
        for f in files(&src().join(dir)) {
            let text = code(&f);
            // The MCP readiness probe is an HTTP client of the containers the agent deploys
            // (hyper's client connection), not a transport of the agent: it alone may name hyper.
            let probe = f.parent().is_some_and(|d| d.ends_with("docker/ready"));
            for transport in [
                "warp",
                "tungstenite",
                "hyper",
                "AgentMessage",
                "BackendMessage",
            ] {
                if probe && transport == "hyper" {
                    continue;
                }
                assert!(
                    !text.contains(transport),
                    "{} mentions {transport}",
                    f.display()
                );
            }
        }
    }
}

/// The local client (`src/cli/`) is an HTTP adapter of its own: it reads the configuration
/// (to find the agent and the token) and otherwise only talks to the local API, so it names
/// no service, no engine, no shared state and no other adapter; and nothing depends on it.
#[test]
fn the_client_names_no_service_or_engine() {
    assert!(names("cli", "config"), "the graph does not see cli");
    for other in [
        "services", "api", "channel", "agent", "exec", "policy", "docker", "audit", "auth",
        "status", "logring", "text", "backoff",
    ] {
        assert!(!names("cli", other), "cli names {other}");
    }
    for (module, used) in graph() {
        assert!(!used.contains("cli"), "{module} names cli");
    }
}

#[test]
fn the_policy_is_pure() {
    for f in files(&src().join("policy")) {
        let text = code(&f);
        for impure in ["tokio", "std::fs", "std::net", "std::process", "std::env"] {
            assert!(!text.contains(impure), "{} uses {impure}", f.display());
        }
        let foreign: Vec<_> = text
            .match_indices("crate::")
            .map(|(i, _)| &text[i..(i + 20).min(text.len())])
            .filter(|s| !s.starts_with("crate::policy"))
            .collect();
        assert!(foreign.is_empty(), "{}: {foreign:?}", f.display());
    }
}

#[test]
fn top_level_modules_form_no_cycle() {
    let g = graph();
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for next in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(cycle) = visit(m, &g, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

/// The `[dependencies]` table of a workspace crate's manifest: the names it lists.
fn runtime_dependencies(krate: &str) -> BTreeSet<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(krate)
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut in_deps = false;
    let mut out = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
        } else if in_deps
            && let Some((name, _)) = line.split_once('=')
            && !line.starts_with('#')
        {
            out.insert(name.trim().to_owned());
        }
    }
    out
}

#[test]
fn the_backends_and_the_agent_stay_apart() {
    // The protocol crate is shared wire types: no I/O stack.
    let protocol = runtime_dependencies("protocol");
    for io in ["tokio", "hyper", "tokio-tungstenite", "warp"] {
        assert!(!protocol.contains(io), "protocol depends on {io}");
    }
    // The backends speak to agents through the protocol only; the agent crate is at most a
    // dev-dependency of theirs (tests run the real agent).
    for backend in ["control-plane", "gateway"] {
        let deps = runtime_dependencies(backend);
        assert!(deps.contains("dtma-protocol"), "{backend}: {deps:?}");
        assert!(!deps.contains("dtma"), "{backend} depends on the agent");
    }
    // The gateway's agent side is the control plane's engine, not a second copy.
    assert!(runtime_dependencies("gateway").contains("dtma-control-plane"));
    assert!(!runtime_dependencies("gateway").contains("tokio-tungstenite"));
}
