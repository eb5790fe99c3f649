//! Containers: the read-only `docker` subcommands the diagnostics role may run (`ps`, `logs`, `inspect`, `stats
//! --no-stream`, …). The operator role may run any `docker` subcommand; no deny rule looks into containers (a
//! `docker run` with host mounts is a known limit of the policy).

use super::args::parse_args;
use crate::policy::shell::Word;

/// Whether a `docker` command only reads state; `Err` says why not.
pub(super) fn docker_readonly(args: &[Word]) -> Result<(), String> {
    let a = parse_args(
        args,
        "Hcl",
        &[
            "host",
            "context",
            "config",
            "log-level",
            "tlscacert",
            "tlscert",
            "tlskey",
        ],
        true,
    );
    let Some(k) = a.first_operand else {
        return Ok(());
    };
    let sub = args.get(k).map(Word::text).unwrap_or("");
    let rest = args.get(k + 1..).unwrap_or(&[]);
    let next = parse_args(rest, "", &[], true)
        .operands
        .first()
        .map(|w| w.text().to_string())
        .unwrap_or_default();
    let no_stream = rest.iter().any(|w| w.text() == "--no-stream");
    let ok = match sub {
        "ps" | "logs" | "inspect" | "images" | "info" | "version" | "top" | "port" => true,
        "stats" => no_stream,
        "container" => {
            matches!(
                next.as_str(),
                "ls" | "ps" | "list" | "inspect" | "logs" | "top" | "port"
            ) || (next == "stats" && no_stream)
        }
        "image" => matches!(next.as_str(), "ls" | "list" | "inspect" | "history"),
        "compose" => matches!(next.as_str(), "ps" | "logs" | "ls" | "images" | "top"),
        "system" => matches!(next.as_str(), "df" | "info"),
        "network" | "volume" => matches!(next.as_str(), "ls" | "list" | "inspect"),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("`docker {sub}` is not allowed"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::check;
    use super::super::{ALLOWED, ROLE_DIAG, Role};
    use super::*;
    use crate::policy::shell;

    fn readonly(line: &str) -> bool {
        let words = shell::parse(line)
            .ok()
            .and_then(|s| s.commands.into_iter().next())
            .map(|c| c.words)
            .unwrap_or_default();
        docker_readonly(words.get(1..).unwrap_or(&[])).is_ok()
    }

    #[test]
    fn read_only_subcommands() {
        for ok in [
            "docker",
            "docker ps -a",
            "docker logs --tail 20 x",
            "docker stats --no-stream",
            "docker -H unix:///run/docker.sock ps",
            "docker container ls",
            "docker container stats --no-stream",
            "docker image history x",
            "docker compose logs web",
            "docker system df",
            "docker network inspect bridge",
        ] {
            assert!(readonly(ok), "{ok}");
        }
    }

    #[test]
    fn changing_or_streaming_subcommands() {
        for no in [
            "docker stats",
            "docker run --rm alpine",
            "docker exec x ls",
            "docker restart x",
            "docker container rm x",
            "docker image prune",
            "docker compose up -d",
            "docker system prune -af",
            "docker volume rm v",
        ] {
            assert!(!readonly(no), "{no}");
        }
    }

    #[test]
    fn per_role() {
        assert_eq!(
            check(Role::Diagnostics, "docker inspect x | grep -i status"),
            ALLOWED
        );
        assert_eq!(check(Role::Diagnostics, "docker restart x"), ROLE_DIAG);
        assert_eq!(check(Role::Operator, "docker restart x"), ALLOWED);
        assert_eq!(check(Role::Operator, "docker system prune -af"), ALLOWED);
    }
}
