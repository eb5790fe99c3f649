//! Port bindings (`portBindings`): Docker's binding lists or plain host ports, loopback by
//! default, with conflicting host ports refused.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use serde_json::Value;

use super::{SpecError, index_path, key_path, kind, quoted};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One published port. Ordered by container port, protocol, host address, host port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub container_port: u16,
    pub protocol: Protocol,
    /// 127.0.0.1 unless the body names another address.
    pub host_ip: IpAddr,
    /// `None`: the agent picks one and keeps it stable across redeploys.
    pub host_port: Option<u16>,
}

/// The host address a binding gets when the body names none: loopback, so nothing is exposed by
/// default. (Docker itself would use every interface.)
pub const DEFAULT_HOST_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

const PORTS_EXPECTED: &str = "an object mapping container ports to host ports, like \
     {\"8080/tcp\": [{\"HostPort\": \"8080\", \"HostIp\": \"127.0.0.1\"}]} or {\"8080\": 8080}";

/// Parse `portBindings`. Keys are container ports: `N`, `N/tcp` or `N/udp` (tcp by default). A
/// value is either Docker's list of bindings `[{"HostPort": "8080", "HostIp": "0.0.0.0"}]` (several
/// entries give several bindings; `HostPort` absent, null, `""` or `"0"` lets the agent pick;
/// `HostIp` absent, null or `""` means 127.0.0.1 — unlike Docker, where it means every interface)
/// or a host port directly (a number or numeric string; `null`, `0`, `""` let the agent pick).
/// Absent or null: no ports. Refuses ports outside 1..=65535, protocols other than tcp/udp,
/// non-numeric strings, empty lists, unknown keys in a binding, and two bindings of one host
/// port and protocol on the same address (or on an address and the unspecified address of its
/// family, which overlap when bound). The result is sorted.
pub fn parse_ports(field: &str, value: Option<&Value>) -> Result<Vec<PortSpec>, SpecError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(SpecError::new(
                field,
                format!("expected {PORTS_EXPECTED}; got {}", kind(other)),
            ));
        }
    };
    // (spec, path) pairs, so that a conflict names both sides.
    let mut out: Vec<(PortSpec, String)> = Vec::new();
    for (key, value) in map {
        let path = key_path(field, key);
        let (container_port, protocol) = parse_container_port(&path, key)?;
        let mut push = |host_ip: IpAddr, host_port: Option<u16>, at: String| {
            out.push((
                PortSpec {
                    container_port,
                    protocol,
                    host_ip,
                    host_port,
                },
                at,
            ));
        };
        match value {
            Value::Array(bindings) => {
                if bindings.is_empty() {
                    return Err(SpecError::new(
                        path,
                        "an empty list binds nothing; give [{}] or null to let the agent pick \
                         a host port, or leave the port out",
                    ));
                }
                for (i, binding) in bindings.iter().enumerate() {
                    let at = index_path(&path, i);
                    let (host_ip, host_port) = parse_docker_binding(&at, binding)?;
                    push(host_ip, host_port, at);
                }
            }
            Value::Object(_) => {
                return Err(SpecError::new(
                    path,
                    "a binding object goes in a list: [{\"HostPort\": \"8080\"}]",
                ));
            }
            other => {
                let host_port = parse_host_port(&path, other)?;
                push(DEFAULT_HOST_IP, host_port, path);
            }
        }
    }
    check_port_conflicts(&out)?;
    let mut ports: Vec<PortSpec> = out.into_iter().map(|(p, _)| p).collect();
    ports.sort();
    Ok(ports)
}

fn parse_container_port(path: &str, key: &str) -> Result<(u16, Protocol), SpecError> {
    let (number, protocol) = match key.split_once('/') {
        Some((n, p)) if p.eq_ignore_ascii_case("tcp") => (n, Protocol::Tcp),
        Some((n, p)) if p.eq_ignore_ascii_case("udp") => (n, Protocol::Udp),
        Some((_, p)) => {
            return Err(SpecError::new(
                path,
                format!(
                    "the protocol {} is not supported: use tcp or udp (\"8080\", \"8080/tcp\", \
                     \"8080/udp\")",
                    quoted(p)
                ),
            ));
        }
        None => (key, Protocol::Tcp),
    };
    match port_number(number) {
        Some(n) if n >= 1 => Ok((n, protocol)),
        _ => Err(SpecError::new(
            path,
            "a container port is a number 1..=65535, optionally followed by /tcp or /udp",
        )),
    }
}

/// A port written as decimal digits: `Some(0..=65535)`, else `None`.
fn port_number(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok()
}

const HOST_PORT_RULE: &str = "a host port is 1..=65535 (a number or numeric string), or 0, \"\" or null to let the agent pick";

/// A host port value: `Ok(None)` lets the agent pick.
fn parse_host_port(path: &str, value: &Value) -> Result<Option<u16>, SpecError> {
    let n = match value {
        Value::Null => return Ok(None),
        Value::String(s) if s.is_empty() => return Ok(None),
        Value::String(s) => match port_number(s) {
            Some(n) => n,
            None => {
                return Err(SpecError::new(
                    path,
                    format!("{} is not a port: {HOST_PORT_RULE}", quoted(s)),
                ));
            }
        },
        Value::Number(n) => match n.as_u64().and_then(|n| u16::try_from(n).ok()) {
            Some(n) => n,
            None => {
                return Err(SpecError::new(
                    path,
                    format!("{n} is not a port: {HOST_PORT_RULE}"),
                ));
            }
        },
        other => {
            return Err(SpecError::new(
                path,
                format!("got {}; {HOST_PORT_RULE}", kind(other)),
            ));
        }
    };
    Ok((n != 0).then_some(n))
}

/// One entry of Docker's binding list: `{"HostPort"?: ..., "HostIp"?: ...}`.
fn parse_docker_binding(path: &str, value: &Value) -> Result<(IpAddr, Option<u16>), SpecError> {
    let Value::Object(obj) = value else {
        return Err(SpecError::new(
            path,
            format!(
                "expected a binding like {{\"HostPort\": \"8080\", \"HostIp\": \"127.0.0.1\"}}; \
                 got {}",
                kind(value)
            ),
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| *k != "HostPort" && *k != "HostIp") {
        return Err(SpecError::new(
            key_path(path, unknown),
            "unknown key; a binding has HostPort and HostIp",
        ));
    }
    let host_port = match obj.get("HostPort") {
        None => None,
        Some(v) => parse_host_port(&key_path(path, "HostPort"), v)?,
    };
    let ip_path = || key_path(path, "HostIp");
    let host_ip = match obj.get("HostIp") {
        None | Some(Value::Null) => DEFAULT_HOST_IP,
        Some(Value::String(s)) if s.is_empty() => DEFAULT_HOST_IP,
        Some(Value::String(s)) => s.parse::<IpAddr>().map_err(|_| {
            SpecError::new(
                ip_path(),
                format!(
                    "{} is not an IP address; give one like 127.0.0.1, 0.0.0.0 or ::1",
                    quoted(s)
                ),
            )
        })?,
        Some(other) => {
            return Err(SpecError::new(
                ip_path(),
                format!(
                    "got {}; give an IP address as a string, like \"127.0.0.1\"",
                    kind(other)
                ),
            ));
        }
    };
    Ok((host_ip, host_port))
}

/// Two fixed bindings of one host port and protocol conflict when their addresses are equal, or
/// when one is the unspecified address (0.0.0.0, ::) of the other's family. `0.0.0.0` and `::`
/// together are fine: that is what Docker itself publishes by default.
fn check_port_conflicts(bindings: &[(PortSpec, String)]) -> Result<(), SpecError> {
    #[derive(Default)]
    struct Slot<'a> {
        exact: BTreeMap<IpAddr, &'a str>,
        unspecified: Option<&'a str>,
    }
    let mut slots: BTreeMap<(Protocol, u16, bool), Slot<'_>> = BTreeMap::new();
    for (spec, path) in bindings {
        let Some(port) = spec.host_port else { continue };
        let slot = slots
            .entry((spec.protocol, port, spec.host_ip.is_ipv4()))
            .or_default();
        let clash = slot.exact.get(&spec.host_ip).copied().or_else(|| {
            if spec.host_ip.is_unspecified() {
                slot.exact.values().next().copied()
            } else {
                slot.unspecified
            }
        });
        if let Some(other) = clash {
            return Err(SpecError::new(
                path.as_str(),
                format!(
                    "host port {port}/{} on {} is also bound by `{other}`",
                    spec.protocol.as_str(),
                    spec.host_ip
                ),
            ));
        }
        slot.exact.insert(spec.host_ip, path);
        if spec.host_ip.is_unspecified() {
            slot.unspecified = Some(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::spec::tests::{fails, port};
    use serde_json::json;

    fn ports(v: Value) -> Vec<PortSpec> {
        parse_ports("portBindings", Some(&v)).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    use Protocol::{Tcp, Udp};

    #[test]
    fn docker_port_bindings() {
        assert_eq!(
            ports(json!({"8080/tcp": [{"HostPort": "8080"}]})),
            [port(8080, Tcp, "127.0.0.1", Some(8080))]
        );
        assert_eq!(
            ports(json!({"8080/tcp": [
                {"HostPort": "8080", "HostIp": "0.0.0.0"},
                {"HostPort": "", "HostIp": "::1"},
                {},
                {"HostPort": null, "HostIp": ""},
                {"HostPort": "0", "HostIp": null},
                {"HostPort": 9090},
            ]})),
            [
                port(8080, Tcp, "0.0.0.0", Some(8080)),
                port(8080, Tcp, "127.0.0.1", None),
                port(8080, Tcp, "127.0.0.1", None),
                port(8080, Tcp, "127.0.0.1", None),
                port(8080, Tcp, "127.0.0.1", Some(9090)),
                port(8080, Tcp, "::1", None),
            ]
        );
        assert_eq!(
            ports(json!({"53/udp": [{"HostPort": "5353", "HostIp": "10.0.0.2"}]})),
            [port(53, Udp, "10.0.0.2", Some(5353))]
        );
    }

    #[test]
    fn simple_port_maps() {
        assert_eq!(
            ports(json!({"8080": 8080})),
            [port(8080, Tcp, "127.0.0.1", Some(8080))]
        );
        assert_eq!(
            ports(json!({"8080/tcp": "8081"})),
            [port(8080, Tcp, "127.0.0.1", Some(8081))]
        );
        assert_eq!(
            ports(json!({"8080/TCP": 1, "53/udp": "65535"})),
            [
                port(53, Udp, "127.0.0.1", Some(65535)),
                port(8080, Tcp, "127.0.0.1", Some(1)),
            ]
        );
        for picked in [json!(null), json!(0), json!(""), json!("0")] {
            assert_eq!(
                ports(json!({"8080": picked})),
                [port(8080, Tcp, "127.0.0.1", None)],
                "{picked}"
            );
        }
        // Mixed forms in one map; output sorted.
        assert_eq!(
            ports(json!({"9000": 9000, "8000/udp": [{"HostPort": "8000"}], "1": null})),
            [
                port(1, Tcp, "127.0.0.1", None),
                port(8000, Udp, "127.0.0.1", Some(8000)),
                port(9000, Tcp, "127.0.0.1", Some(9000)),
            ]
        );
    }

    #[test]
    fn no_ports() {
        assert_eq!(parse_ports("p", None), Ok(vec![]));
        assert_eq!(parse_ports("p", Some(&Value::Null)), Ok(vec![]));
        assert_eq!(ports(json!({})), vec![]);
    }

    #[test]
    fn ports_that_do_not_clash() {
        // Another protocol, another specific address, the two unspecified addresses (Docker's
        // own default), and any number of agent-picked ports.
        let p = ports(json!({
            "80/tcp": [{"HostPort": "8080", "HostIp": "0.0.0.0"}, {"HostPort": "8080", "HostIp": "::"}],
            "80/udp": [{"HostPort": "8080", "HostIp": "0.0.0.0"}],
            "81": [{"HostPort": "9000", "HostIp": "127.0.0.1"}, {"HostPort": "9000", "HostIp": "10.1.1.1"}],
            "82": null,
            "83": 0,
        }));
        assert_eq!(p.len(), 7);
    }

    #[test]
    fn bad_ports_are_refused_naming_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (json!([8080]), "portBindings"),
            (json!("8080:8080"), "portBindings"),
            (json!(8080), "portBindings"),
            (json!(true), "portBindings"),
            (json!({"0": 80}), "portBindings.0"),
            (json!({"65536": 80}), "portBindings.65536"),
            (json!({"abc": 80}), "portBindings.abc"),
            (json!({"": 80}), "portBindings."),
            (json!({"-1": 80}), "portBindings.-1"),
            (json!({"80 ": 80}), "portBindings.80 "),
            (json!({"8080/sctp": 80}), "portBindings.8080/sctp"),
            (json!({"8080/": 80}), "portBindings.8080/"),
            (json!({"/tcp": 80}), "portBindings./tcp"),
            (json!({"8080-8090/tcp": 80}), "portBindings.8080-8090/tcp"),
            (json!({"80": 65536}), "portBindings.80"),
            (json!({"80": -1}), "portBindings.80"),
            (json!({"80": 1.5}), "portBindings.80"),
            (json!({"80": "abc"}), "portBindings.80"),
            (json!({"80": " 80"}), "portBindings.80"),
            (json!({"80": "80a"}), "portBindings.80"),
            (json!({"80": "+80"}), "portBindings.80"),
            (json!({"80": "8000-8010"}), "portBindings.80"),
            (json!({"80": "99999"}), "portBindings.80"),
            (json!({"80": true}), "portBindings.80"),
            (json!({"80": {"HostPort": "80"}}), "portBindings.80"),
            (json!({"80": []}), "portBindings.80"),
            (json!({"80": [null]}), "portBindings.80[0]"),
            (json!({"80": [{}, 8080]}), "portBindings.80[1]"),
            (
                json!({"80": [{"HostPort": "80", "hostport": "81"}]}),
                "portBindings.80[0].hostport",
            ),
            (
                json!({"80": [{"HostPort": "x"}]}),
                "portBindings.80[0].HostPort",
            ),
            (
                json!({"80": [{"HostPort": "70000"}]}),
                "portBindings.80[0].HostPort",
            ),
            (
                json!({"80": [{"HostPort": false}]}),
                "portBindings.80[0].HostPort",
            ),
            (
                json!({"80": [{"HostIp": "localhost"}]}),
                "portBindings.80[0].HostIp",
            ),
            (
                json!({"80": [{"HostIp": "[::1]"}]}),
                "portBindings.80[0].HostIp",
            ),
            (
                json!({"80": [{"HostIp": " 127.0.0.1"}]}),
                "portBindings.80[0].HostIp",
            ),
            (
                json!({"80": [{"HostIp": 127}]}),
                "portBindings.80[0].HostIp",
            ),
        ];
        for (v, field) in cases {
            fails(parse_ports("portBindings", Some(&v)), field);
        }
    }

    #[test]
    fn port_errors_say_what_is_accepted() {
        let m = fails(parse_ports("p", Some(&json!({"80/sctp": 1}))), "p.80/sctp");
        assert!(m.contains("tcp or udp"), "{m}");
        let m = fails(parse_ports("p", Some(&json!({"80": "abc"}))), "p.80");
        assert!(m.contains("1..=65535"), "{m}");
        let m = fails(parse_ports("p", Some(&json!(["80:80"]))), "p");
        assert!(m.contains("HostPort") && m.contains("a list"), "{m}");
    }

    #[test]
    fn duplicate_host_ports_are_refused() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"8080": 9000, "8081": 9000}), "p.8081"),
            (json!({"8080": 9000, "8081/tcp": "9000"}), "p.8081/tcp"),
            (
                json!({"8080": [{"HostPort": "9000"}, {"HostPort": "9000"}]}),
                "p.8080[1]",
            ),
            (
                json!({"53/udp": [{"HostPort": "53", "HostIp": "::1"}], "54/udp": [{"HostPort": "53", "HostIp": "::1"}]}),
                "p.54/udp[0]",
            ),
            // The unspecified address overlaps every address of its family, either way round.
            (
                json!({"80": [{"HostPort": "80", "HostIp": "0.0.0.0"}, {"HostPort": "80"}]}),
                "p.80[1]",
            ),
            (
                json!({"80": [{"HostPort": "80", "HostIp": "10.0.0.1"}, {"HostPort": "80", "HostIp": "0.0.0.0"}]}),
                "p.80[1]",
            ),
            (
                json!({"80": [{"HostPort": "80", "HostIp": "::"}, {"HostPort": "80", "HostIp": "::1"}]}),
                "p.80[1]",
            ),
        ];
        for (v, field) in cases {
            let m = fails(parse_ports("p", Some(&v)), field);
            assert!(m.contains("also bound by `p."), "{m}");
        }
    }
}
