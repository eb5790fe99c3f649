//! Bearer-token authentication for the local API: tokens map to roles, comparison takes the
//! same time whatever the guess, and repeated failures from one address are slowed down.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{Config, Secret};
use crate::policy::Role;

/// Who is calling, by the token they presented. `name` is safe to log; the token is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("missing Authorization header (expected `Authorization: Bearer <token>`)")]
    Missing,
    #[error("malformed Authorization header (expected `Authorization: Bearer <token>`)")]
    Malformed,
    #[error("invalid token")]
    Wrong,
}

/// Failures tolerated from one address before responses are delayed.
const FREE_FAILURES: u32 = 5;
/// Failures are forgotten after this long without another.
const FAILURE_WINDOW: Duration = Duration::from_secs(300);
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Addresses tracked at most (oldest dropped), so a scan cannot grow the map without bound.
const MAX_TRACKED: usize = 10_000;

pub struct Auth {
    tokens: Vec<(Secret, Caller)>,
    /// Tokens of running commands ([`Auth::delegate`]): each valid until its command ends.
    delegated: Mutex<Vec<(Secret, Caller)>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// The prefix of a command's token (`DTMA_API_TOKEN`), so a reader can tell it from the
/// agent's own tokens.
pub const DELEGATED_PREFIX: &str = "dtma-cmd-";

impl Auth {
    pub fn new(tokens: Vec<(Secret, Caller)>) -> Auth {
        Auth {
            tokens,
            delegated: Mutex::new(Vec::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The seed's two tokens (admin) plus the config file's tokens with their roles.
    pub fn from_config(c: &Config) -> Auth {
        let mut tokens = vec![(
            c.bearer_token.clone(),
            Caller {
                name: "dtma_bearer_token".into(),
                role: Role::Admin,
            },
        )];
        if let Some(k) = &c.backend_api_key {
            tokens.push((
                k.clone(),
                Caller {
                    name: "backend_to_dtma_api_key".into(),
                    role: Role::Admin,
                },
            ));
        }
        for t in &c.extra_tokens {
            tokens.push((
                t.token.clone(),
                Caller {
                    name: t.name.clone(),
                    role: t.role,
                },
            ));
        }
        Auth::new(tokens)
    }

    /// Check an `Authorization` header value.
    pub fn check(&self, header: Option<&str>) -> Result<Caller, Error> {
        let header = header.ok_or(Error::Missing)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(Error::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(Error::Malformed);
        }
        let token = token.trim().as_bytes();
        // Compare against every token so the time does not tell which one nearly matched.
        let mut found = None;
        let delegated = self.delegated.lock().unwrap_or_else(|p| p.into_inner());
        for (secret, caller) in self.tokens.iter().chain(delegated.iter()) {
            if constant_time_eq(secret.expose().as_bytes(), token) && found.is_none() {
                found = Some(caller.clone());
            }
        }
        found.ok_or(Error::Wrong)
    }

    /// A fresh token with `caller`'s role, for a command `caller` runs: the command reaches the
    /// local API with it (the operator profile's way to MCP: no Docker socket), and no further
    /// than its caller could. Valid until [`Auth::revoke`]. `None` when the OS has no randomness
    /// to give (the command then runs without one).
    pub fn delegate(&self, caller: &Caller) -> Option<Secret> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).ok()?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let token = Secret::new(format!("{DELEGATED_PREFIX}{hex}"));
        let name = format!("command of {}", caller.name);
        self.delegated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((
                token.clone(),
                Caller {
                    name,
                    role: caller.role,
                },
            ));
        Some(token)
    }

    /// End a delegated token: its command has ended.
    pub fn revoke(&self, token: &Secret) {
        self.delegated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(t, _)| t.expose() != token.expose());
    }

    /// Record a failure from `ip`; returns how long to hold the response back.
    pub fn failed(&self, ip: Option<IpAddr>) -> Duration {
        let Some(ip) = ip else {
            return Duration::ZERO;
        };
        let mut g = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if g.len() >= MAX_TRACKED && !g.contains_key(&ip) {
            g.retain(|_, (_, at)| now.duration_since(*at) < FAILURE_WINDOW);
            if g.len() >= MAX_TRACKED
                && let Some(oldest) = g.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k)
            {
                g.remove(&oldest);
            }
        }
        let entry = g.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) > FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.1 = now;
        delay_for(entry.0)
    }

    /// A success from `ip` clears its failures.
    pub fn succeeded(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            self.failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&ip);
        }
    }
}

/// Delay after the n-th failure: none for the first few, then doubling from 250 ms, capped.
fn delay_for(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let exp = (failures - FREE_FAILURES - 1).min(8);
    (Duration::from_millis(250) * 2u32.pow(exp)).min(MAX_DELAY)
}

/// Equal-time comparison (`subtle`): the time depends on the lengths only, never on where the
/// bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(vec![
            (
                Secret::new("admin-token"),
                Caller {
                    name: "a".into(),
                    role: Role::Admin,
                },
            ),
            (
                Secret::new("diag-token"),
                Caller {
                    name: "d".into(),
                    role: Role::Diagnostics,
                },
            ),
        ])
    }

    #[test]
    fn bearer_only_and_roles() {
        let a = auth();
        assert_eq!(
            a.check(Some("Bearer admin-token")).unwrap().role,
            Role::Admin
        );
        assert_eq!(
            a.check(Some("bearer diag-token")).unwrap().role,
            Role::Diagnostics
        );
        assert_eq!(a.check(None), Err(Error::Missing));
        assert_eq!(a.check(Some("Basic YWRtaW4=")), Err(Error::Malformed));
        assert_eq!(a.check(Some("Bearer")), Err(Error::Malformed));
        assert_eq!(a.check(Some("Bearer admin-tokem")), Err(Error::Wrong));
        assert_eq!(
            a.check(Some("Bearer admin-token-longer")),
            Err(Error::Wrong)
        );
    }

    #[test]
    fn a_delegated_token_has_its_callers_role_until_revoked() {
        let a = auth();
        let diag = a.check(Some("Bearer diag-token")).unwrap();
        let token = a.delegate(&diag).unwrap();
        assert!(token.expose().starts_with(DELEGATED_PREFIX));
        let header = format!("Bearer {}", token.expose());
        let caller = a.check(Some(&header)).unwrap();
        assert_eq!(caller.role, Role::Diagnostics);
        assert_eq!(caller.name, "command of d");
        let other = a.delegate(&diag).unwrap();
        assert_ne!(other.expose(), token.expose());
        a.revoke(&token);
        assert_eq!(a.check(Some(&header)), Err(Error::Wrong));
        assert!(a.check(Some(&format!("Bearer {}", other.expose()))).is_ok());
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"\xff"));
        assert!(constant_time_eq(b"", b""));
        // Lengths that differ by a multiple of 65536 are still different.
        assert!(!constant_time_eq(b"", &[0u8; 65536]));
    }

    #[test]
    fn repeated_failures_are_slowed_down_and_success_clears() {
        let a = auth();
        let ip = Some("127.0.0.9".parse().unwrap());
        let delays: Vec<Duration> = (0..9).map(|_| a.failed(ip)).collect();
        assert!(delays[..5].iter().all(|d| d.is_zero()));
        assert_eq!(delays[5], Duration::from_millis(250));
        assert_eq!(delays[6], Duration::from_millis(500));
        assert!(delays[8] <= MAX_DELAY);
        a.succeeded(ip);
        assert!(a.failed(ip).is_zero());
    }
}
