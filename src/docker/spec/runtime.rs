//! Capabilities (`capAdd`), transport (`mcpTransportType`), endpoint path (`mcpEndpointPath`)
//! and readiness timeout (`readinessTimeoutMs`).

use std::collections::BTreeSet;
use std::time::Duration;

use super::{SpecError, index_path, quoted};

/// The Linux capability names, without `CAP_`: the wire contract's list (the decoder and the
/// schema use the same one).
pub use dtma_protocol::LINUX_CAPABILITIES;

/// Parse `capAdd`: upper-case Linux capability names, with or without `CAP_`. The result has no
/// prefix, no duplicates, and is sorted. `ALL` is refused: every capability must be named.
pub fn parse_cap_add(field: &str, caps: Option<&[String]>) -> Result<Vec<String>, SpecError> {
    let mut out = BTreeSet::new();
    for (i, cap) in caps.unwrap_or_default().iter().enumerate() {
        let path = index_path(field, i);
        let upper = cap.to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if bare == "ALL" {
            return Err(SpecError::new(
                path,
                "ALL is refused; name each capability the server needs",
            ));
        }
        if !LINUX_CAPABILITIES.contains(&bare) {
            return Err(SpecError::new(
                path,
                format!(
                    "{} is not a Linux capability name (see capabilities(7)), e.g. \
                     NET_BIND_SERVICE",
                    quoted(cap)
                ),
            ));
        }
        if *cap != upper {
            return Err(SpecError::new(
                path,
                format!("capability names are upper-case: write {bare}"),
            ));
        }
        out.insert(bare.to_owned());
    }
    Ok(out.into_iter().collect())
}

/// `mcpTransportType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Http,
    Sse,
    Stdio,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Sse => "sse",
            Transport::Stdio => "stdio",
        }
    }
}

/// `mcpTransportType`: `http` (default), `sse` or `stdio`, lower-case.
pub fn parse_transport(field: &str, value: Option<&str>) -> Result<Transport, SpecError> {
    match value {
        None | Some("http") => Ok(Transport::Http),
        Some("sse") => Ok(Transport::Sse),
        Some("stdio") => Ok(Transport::Stdio),
        Some(other) => Err(SpecError::new(
            field,
            format!("{} is not a transport: http, sse or stdio", quoted(other)),
        )),
    }
}

/// `mcpEndpointPath`: default `/mcp`; starts with `/`, has no whitespace or control characters,
/// at most 1024 bytes (it becomes a label and part of a URL).
pub fn parse_endpoint_path(field: &str, value: Option<&str>) -> Result<String, SpecError> {
    let path = value.unwrap_or("/mcp");
    if !path.starts_with('/') {
        return Err(SpecError::new(
            field,
            format!("{} must start with '/', like \"/mcp\"", quoted(path)),
        ));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SpecError::new(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    if path.len() > 1024 {
        return Err(SpecError::new(field, "is longer than 1024 bytes"));
    }
    Ok(path.to_owned())
}

/// `readinessTimeoutMs`: 1000..=600000, default 60000.
pub fn parse_readiness_timeout(field: &str, value: Option<u64>) -> Result<Duration, SpecError> {
    match value {
        None => Ok(Duration::from_secs(60)),
        Some(ms) if (1000..=600_000).contains(&ms) => Ok(Duration::from_millis(ms)),
        Some(ms) => Err(SpecError::new(
            field,
            format!("{ms} is out of range: 1000..=600000 milliseconds"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::spec::tests::fails;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn capabilities() {
        assert_eq!(parse_cap_add("c", None), Ok(vec![]));
        assert_eq!(
            parse_cap_add(
                "c",
                Some(&strings(&[
                    "NET_BIND_SERVICE",
                    "CAP_NET_ADMIN",
                    "NET_ADMIN"
                ]))
            ),
            Ok(strings(&["NET_ADMIN", "NET_BIND_SERVICE"]))
        );
        for cap in LINUX_CAPABILITIES {
            assert_eq!(
                parse_cap_add("c", Some(&[format!("CAP_{cap}")])),
                Ok(vec![cap.to_owned()])
            );
        }
        let f = "servers[0].capAdd";
        let m = fails(
            parse_cap_add(f, Some(&strings(&["net_admin"]))),
            "servers[0].capAdd[0]",
        );
        assert!(m.contains("upper-case") && m.contains("NET_ADMIN"), "{m}");
        for bad in [
            "ALL",
            "CAP_ALL",
            "all",
            "FOO",
            "",
            "CAP_",
            "NET ADMIN",
            "cap_NET_ADMIN",
        ] {
            fails(
                parse_cap_add(f, Some(&strings(&["CHOWN", bad]))),
                "servers[0].capAdd[1]",
            );
        }
    }

    #[test]
    fn transport_endpoint_and_readiness() {
        let f = "t";
        assert_eq!(parse_transport(f, None), Ok(Transport::Http));
        assert_eq!(parse_transport(f, Some("http")), Ok(Transport::Http));
        assert_eq!(parse_transport(f, Some("sse")), Ok(Transport::Sse));
        assert_eq!(parse_transport(f, Some("stdio")), Ok(Transport::Stdio));
        for bad in ["HTTP", "ws", "", "http "] {
            fails(parse_transport(f, Some(bad)), f);
        }

        assert_eq!(parse_endpoint_path(f, None).as_deref(), Ok("/mcp"));
        assert_eq!(parse_endpoint_path(f, Some("/")).as_deref(), Ok("/"));
        assert_eq!(
            parse_endpoint_path(f, Some("/v1/mcp")).as_deref(),
            Ok("/v1/mcp")
        );
        let long = format!("/{}", "a".repeat(1024));
        for bad in [
            "mcp",
            "",
            " /mcp",
            "/m cp",
            "/mcp\n",
            "/mcp\t",
            long.as_str(),
        ] {
            fails(parse_endpoint_path(f, Some(bad)), f);
        }

        assert_eq!(
            parse_readiness_timeout(f, None),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            parse_readiness_timeout(f, Some(1000)),
            Ok(Duration::from_secs(1))
        );
        assert_eq!(
            parse_readiness_timeout(f, Some(600_000)),
            Ok(Duration::from_secs(600))
        );
        for bad in [0, 999, 600_001] {
            fails(parse_readiness_timeout(f, Some(bad)), f);
        }
    }
}
