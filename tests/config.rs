//! The configuration through the real binary (exit codes, a non-UTF-8 environment, --help) and
//! the README's configuration table against the settings struct.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::{Command, Output};

use clap::Args;
use dtma::config::settings::{Settings, command};

/// The agent with only the given environment (the test runner's own may hold DTMA_* values).
fn dtma(args: &[&str], env: &[(OsString, OsString)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dtma"))
        .args(args)
        .env_clear()
        .envs(env.iter().cloned())
        .output()
        .expect("the dtma binary runs")
}

fn var(name: &str, value: &str) -> (OsString, OsString) {
    (name.into(), value.into())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_non_utf8_environment_is_no_panic() {
    let junk = (
        OsString::from_vec(b"SOME_TOOL_\xff".to_vec()),
        OsString::from_vec(b"caf\xe9".to_vec()),
    );
    let lang = (
        OsString::from("LANG"),
        OsString::from_vec(b"\xfe\xff".to_vec()),
    );
    let token = var("DTMA_BEARER_TOKEN", "t");
    let out = dtma(&["--print-config"], &[junk.clone(), lang, token.clone()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["bearer_token"], "[redacted]");

    let listen = (
        OsString::from("DTMA_LISTEN"),
        OsString::from_vec(b"0.0.0.0:\xff".to_vec()),
    );
    let out = dtma(&["--print-config"], &[junk, token, listen]);
    assert_eq!(out.status.code(), Some(64));
    let err = text(&out.stderr);
    assert!(err.contains("DTMA_LISTEN is not valid UTF-8"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_zero_interval_in_the_file_is_a_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let path = dir.join("dtma.toml");
    std::fs::write(&path, "ping_interval_ms = 0\nheartbeat_interval_ms = 0\n").unwrap();
    let out = dtma(
        &["--ws-url", "ws://127.0.0.1:9/", "--print-config"],
        &[
            var("DTMA_BEARER_TOKEN", "t"),
            var("DTMA_CONFIG", &path.to_string_lossy()),
        ],
    );
    assert_eq!(out.status.code(), Some(64));
    let err = text(&out.stderr);
    assert!(err.contains("`ping_interval_ms` in"), "{err}");
    assert!(err.contains("`heartbeat_interval_ms` in"), "{err}");
}

#[test]
fn unknown_flags_and_missing_tokens_exit_64_together() {
    let out = dtma(&["--bogus"], &[]);
    assert_eq!(out.status.code(), Some(64));
    let err = text(&out.stderr);
    assert!(err.contains("--bogus"), "{err}");
    assert!(err.contains("DTMA_BEARER_TOKEN is not set"), "{err}");
}

#[test]
fn help_lists_every_setting_with_its_variable_and_default() {
    let out = dtma(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    // Help wraps long lines; compare on single spaces.
    let help = text(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let cmd = command();
    for arg in cmd.get_arguments() {
        let Some(var) = arg.get_env() else { continue };
        let var = var.to_string_lossy();
        assert!(help.contains(&*var), "--help lacks {var}: {help}");
        if !arg.is_hide_set() {
            let long = format!("--{}", arg.get_long().unwrap());
            assert!(help.contains(&long), "--help lacks {long}");
        }
        for default in arg.get_default_values() {
            let default = format!("[default: {}]", default.to_string_lossy());
            assert!(help.contains(&default), "--help lacks {var} {default}");
        }
    }
    let version = dtma(&["--version"], &[]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        text(&version.stdout).trim(),
        format!("dtma {}", dtma::long_version())
    );
}

/// One row of the README's configuration table.
#[derive(Debug)]
struct Row {
    var: String,
    flag: String,
    key: String,
    default: String,
}

fn readme_rows() -> Vec<Row> {
    let readme = include_str!("../README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("README has a Configuration section");
    let section = section.split("\n## ").next().unwrap_or_default();
    let unquote = |cell: &str| cell.trim().trim_matches('`').to_owned();
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').collect();
            assert!(cells.len() >= 6, "short row: {line}");
            Row {
                var: unquote(cells[1]),
                flag: unquote(cells[2]),
                key: unquote(cells[3]),
                default: cells[4].trim().to_owned(),
            }
        })
        .collect()
}

#[test]
fn readme_table_matches_the_settings() {
    let rows = readme_rows();
    let cmd = command();
    let file_keys = Settings::augment_args(clap::Command::new("keys"));
    let in_file = |id: &str| file_keys.get_arguments().any(|a| a.get_id() == id);

    let mut vars = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(var) = arg.get_env() else { continue };
        let var = var.to_string_lossy().into_owned();
        let row = rows
            .iter()
            .find(|r| r.var == var)
            .unwrap_or_else(|| panic!("README's table lacks {var}"));
        let flag = match (arg.is_hide_set(), arg.get_long()) {
            (false, Some(long)) => format!("--{long}"),
            _ => String::new(),
        };
        assert_eq!(row.flag, flag, "flag of {var}");
        let id = arg.get_id().as_str();
        let key = if in_file(id) { id } else { "" };
        assert_eq!(row.key, key, "file key of {var}");
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        match defaults.as_slice() {
            [default] => assert_eq!(row.default.trim_matches('`'), default, "default of {var}"),
            [] => assert!(
                !row.default.starts_with('`') && row.default.parse::<f64>().is_err(),
                "{var} has no default in the settings, the README gives `{}`",
                row.default
            ),
            more => panic!("{var} has several defaults: {more:?}"),
        }
        vars.push(var);
    }
    for row in &rows {
        assert!(
            vars.contains(&row.var),
            "README's table has {}, which no setting reads",
            row.var
        );
    }
    assert_eq!(rows.len(), vars.len(), "a variable is listed twice");
}
