//! Resource limits (`resourceLimits`): memory sizes, CPU cores and the pids limit, in Docker's
//! units.

use serde_json::Value;

use super::{SpecError, key_path, kind, quoted};

const KIB: u64 = 1024;
pub(super) const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// Docker refuses a memory limit below 6 MiB.
pub const MIN_MEMORY_BYTES: u64 = 6 * MIB;
pub const MAX_MEMORY_BYTES: u64 = TIB;

/// The container's resource limits, in Docker's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `HostConfig.Memory`. Default 512 MiB.
    pub memory_bytes: u64,
    /// `HostConfig.NanoCpus`: 10^9 per core. Default 1 core.
    pub nano_cpus: i64,
    /// `HostConfig.PidsLimit`. Default 256.
    pub pids: i64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: 512 * MIB,
            nano_cpus: 1_000_000_000,
            pids: 256,
        }
    }
}

const MEMORY_RULE: &str = "give bytes as an integer or a size like \"512m\", \"1g\", \"1.5g\", \
     \"512MiB\", \"512MB\" (k, m, g, t are powers of 1024, with or without b/ib; case-insensitive)";

/// Parse `resourceLimits`: `{memory?, cpu?, pids?}`; absent, null or a null member means the
/// default (512 MiB, 1.0 CPU, 256 pids). Unknown keys are refused.
/// - `memory`: an integer number of bytes, or a string: a decimal number (`1073741824`, `1.5`)
///   with an optional unit `k`, `m`, `g`, `t`, each optionally followed by `b` or `ib`, or `b`
///   alone, case-insensitive, one optional space before the unit. **Every unit is a power of 1024**
///   (`512MB` is 512 MiB, as Docker's CLI reads it); fractions round down to whole bytes.
///   6 MiB (Docker's minimum) ..= 1 TiB.
/// - `cpu`: cores as a number or a numeric string (`0.5`, `"2"`), 0.01..=64.
/// - `pids`: an integer (or a string of digits), 1..=32768.
pub fn parse_limits(field: &str, value: Option<&Value>) -> Result<Limits, SpecError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(Limits::default()),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(SpecError::new(
                field,
                format!(
                    "expected an object {{\"memory\"?, \"cpu\"?, \"pids\"?}}; got {}",
                    kind(other)
                ),
            ));
        }
    };
    let mut limits = Limits::default();
    for (key, value) in map {
        let path = key_path(field, key);
        if value.is_null() && matches!(key.as_str(), "memory" | "cpu" | "pids") {
            continue;
        }
        match key.as_str() {
            "memory" => limits.memory_bytes = parse_memory(&path, value)?,
            "cpu" => limits.nano_cpus = parse_cpu(&path, value)?,
            "pids" => limits.pids = parse_pids(&path, value)?,
            _ => {
                return Err(SpecError::new(
                    path,
                    "unknown key; resource limits are memory, cpu and pids",
                ));
            }
        }
    }
    Ok(limits)
}

fn parse_memory(path: &str, value: &Value) -> Result<u64, SpecError> {
    let bytes = match value {
        Value::Number(n) => n.as_u64().ok_or_else(|| {
            SpecError::new(
                path,
                format!("{n} is not a whole, positive number of bytes; {MEMORY_RULE}"),
            )
        })?,
        Value::String(s) => parse_size(s).ok_or_else(|| {
            SpecError::new(path, format!("{} is not a size; {MEMORY_RULE}", quoted(s)))
        })?,
        other => {
            return Err(SpecError::new(
                path,
                format!("got {}; {MEMORY_RULE}", kind(other)),
            ));
        }
    };
    if bytes < MIN_MEMORY_BYTES {
        return Err(SpecError::new(
            path,
            format!("{bytes} bytes is below Docker's minimum of 6 MiB (6291456 bytes)"),
        ));
    }
    if bytes > MAX_MEMORY_BYTES {
        return Err(SpecError::new(
            path,
            format!("{bytes} bytes is above the maximum of 1 TiB (1099511627776 bytes)"),
        ));
    }
    Ok(bytes)
}

/// `"1.5g"` -> 1610612736. `None` when it does not parse (or overflows u64); the caller checks the
/// range.
fn parse_size(s: &str) -> Option<u64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let multiplier: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => TIB,
        _ => return None,
    };
    let (whole, fraction) = split_decimal(number)?;
    // u128 so that neither product overflows before the range check.
    let whole: u128 = whole.parse::<u128>().ok()?;
    let mut bytes = whole.checked_mul(u128::from(multiplier))?;
    if !fraction.is_empty() {
        let scale = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
        let digits: u128 = fraction.parse().ok()?;
        bytes = bytes.checked_add(digits.checked_mul(u128::from(multiplier))? / scale)?;
    }
    u64::try_from(bytes).ok()
}

/// `"12.5"` -> `("12", "5")`; digits required on both sides of a '.'; at most 9 decimals and 20
/// whole digits (more cannot be a sensible limit and would overflow).
fn split_decimal(s: &str) -> Option<(&str, &str)> {
    let (whole, fraction) = match s.split_once('.') {
        Some((w, f)) => {
            if f.is_empty() || f.len() > 9 {
                return None;
            }
            (w, f)
        }
        None => (s, ""),
    };
    let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    (!whole.is_empty() && whole.len() <= 20 && digits(whole) && digits(fraction))
        .then_some((whole, fraction))
}

const CPU_RULE: &str = "give cores as a number or numeric string, 0.01 to 64 (e.g. 0.5, \"2\")";

fn parse_cpu(path: &str, value: &Value) -> Result<i64, SpecError> {
    let cores = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => split_decimal(s).and_then(|_| s.parse::<f64>().ok()),
        _ => None,
    };
    let shown = match value {
        Value::String(s) => quoted(s),
        Value::Number(n) => n.to_string(),
        other => kind(other).to_owned(),
    };
    match cores {
        Some(c) if c.is_finite() && (0.01..=64.0).contains(&c) => {
            // At most 64e9: fits an i64, and rounding keeps "0.3" at 300_000_000.
            Ok((c * 1e9).round() as i64)
        }
        Some(_) => Err(SpecError::new(
            path,
            format!("{shown} is out of range; {CPU_RULE}"),
        )),
        None => Err(SpecError::new(
            path,
            format!("{shown} is not a number of cores; {CPU_RULE}"),
        )),
    }
}

const PIDS_RULE: &str = "give an integer 1..=32768";

fn parse_pids(path: &str, value: &Value) -> Result<i64, SpecError> {
    let n = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s)
            if !s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse::<i64>().ok()
        }
        _ => None,
    };
    match n {
        Some(n) if (1..=32768).contains(&n) => Ok(n),
        Some(n) => Err(SpecError::new(
            path,
            format!("{n} is out of range; {PIDS_RULE}"),
        )),
        None => Err(SpecError::new(path, format!("not an integer; {PIDS_RULE}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::spec::tests::fails;
    use serde_json::json;

    fn limits(v: Value) -> Limits {
        parse_limits("resourceLimits", Some(&v)).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn memory(v: Value) -> u64 {
        limits(json!({ "memory": v })).memory_bytes
    }

    #[test]
    fn limit_defaults() {
        let d = Limits {
            memory_bytes: 512 * 1024 * 1024,
            nano_cpus: 1_000_000_000,
            pids: 256,
        };
        assert_eq!(Limits::default(), d);
        assert_eq!(parse_limits("l", None), Ok(d));
        assert_eq!(parse_limits("l", Some(&Value::Null)), Ok(d));
        assert_eq!(limits(json!({})), d);
        assert_eq!(
            limits(json!({"memory": null, "cpu": null, "pids": null})),
            d
        );
    }

    #[test]
    fn memory_forms() {
        let cases: Vec<(Value, u64)> = vec![
            (json!(536870912), 512 * MIB),
            (json!("1073741824"), GIB),
            (json!("512m"), 512 * MIB),
            (json!("512M"), 512 * MIB),
            (json!("512mb"), 512 * MIB),
            (json!("512MB"), 512 * MIB),
            (json!("512MiB"), 512 * MIB),
            (json!("512 MiB"), 512 * MIB),
            (json!("1g"), GIB),
            (json!("1G"), GIB),
            (json!("1gib"), GIB),
            (json!("1.5g"), GIB + GIB / 2),
            (json!("0.5g"), 512 * MIB),
            (json!("6144k"), 6 * MIB),
            (json!("6291456b"), 6 * MIB),
            (json!(6291456), MIN_MEMORY_BYTES),
            (json!("1t"), TIB),
            (json!("1TiB"), MAX_MEMORY_BYTES),
        ];
        for (v, want) in cases {
            assert_eq!(memory(v.clone()), want, "{v}");
        }
        assert_eq!(parse_size("256k"), Some(256 * KIB));
        assert_eq!(parse_size("0.1k"), Some(102), "fractions round down");
        assert_eq!(parse_size("1.000000001g"), Some(GIB + 1));
    }

    #[test]
    fn cpu_and_pids_forms() {
        assert_eq!(limits(json!({"cpu": 0.5})).nano_cpus, 500_000_000);
        assert_eq!(limits(json!({"cpu": "0.5"})).nano_cpus, 500_000_000);
        assert_eq!(limits(json!({"cpu": "0.3"})).nano_cpus, 300_000_000);
        assert_eq!(limits(json!({"cpu": 2})).nano_cpus, 2_000_000_000);
        assert_eq!(limits(json!({"cpu": "64"})).nano_cpus, 64_000_000_000);
        assert_eq!(limits(json!({"cpu": 0.01})).nano_cpus, 10_000_000);
        assert_eq!(limits(json!({"pids": 1})).pids, 1);
        assert_eq!(limits(json!({"pids": 32768})).pids, 32768);
        assert_eq!(limits(json!({"pids": "100"})).pids, 100);
        assert_eq!(
            limits(json!({"memory": "1g", "cpu": "0.5", "pids": 64})),
            Limits {
                memory_bytes: GIB,
                nano_cpus: 500_000_000,
                pids: 64
            }
        );
    }

    #[test]
    fn bad_limits_are_refused_naming_the_field() {
        let f = "servers[1].resourceLimits";
        let mem = format!("{f}.memory");
        let cpu = format!("{f}.cpu");
        let pids = format!("{f}.pids");
        let cases: Vec<(Value, &str)> = vec![
            (json!("512m"), f),
            (json!([1]), f),
            (json!(1), f),
            (
                json!({"memory": "512m", "swap": 1}),
                "servers[1].resourceLimits.swap",
            ),
            (
                json!({"Memory": "512m"}),
                "servers[1].resourceLimits.Memory",
            ),
            (json!({"cpus": 1}), "servers[1].resourceLimits.cpus"),
            (json!({"memory": ""}), &mem),
            (json!({"memory": "g"}), &mem),
            (json!({"memory": "512x"}), &mem),
            (json!({"memory": "512 x"}), &mem),
            (json!({"memory": "1.5.5g"}), &mem),
            (json!({"memory": ".5g"}), &mem),
            (json!({"memory": "5.g"}), &mem),
            (json!({"memory": "-1g"}), &mem),
            (json!({"memory": "+1g"}), &mem),
            (json!({"memory": "1e9"}), &mem),
            (json!({"memory": "0x1000000"}), &mem),
            (json!({"memory": " 512m"}), &mem),
            (json!({"memory": "512m "}), &mem),
            (json!({"memory": "512  m"}), &mem),
            (json!({"memory": "512mibb"}), &mem),
            (json!({"memory": "1.0000000001g"}), &mem),
            (json!({"memory": "99999999999999999999999g"}), &mem),
            (json!({"memory": "20000000000t"}), &mem),
            (json!({"memory": 536870912.5}), &mem),
            (json!({"memory": -536870912}), &mem),
            (json!({"memory": true}), &mem),
            (json!({"memory": [512]}), &mem),
            (json!({"memory": "256k"}), &mem),
            (json!({"memory": 6291455}), &mem),
            (json!({"memory": 0}), &mem),
            (json!({"memory": "2t"}), &mem),
            (json!({"memory": 1099511627777u64}), &mem),
            (json!({"cpu": 0}), &cpu),
            (json!({"cpu": 0.001}), &cpu),
            (json!({"cpu": 64.5}), &cpu),
            (json!({"cpu": -1}), &cpu),
            (json!({"cpu": "abc"}), &cpu),
            (json!({"cpu": ""}), &cpu),
            (json!({"cpu": "NaN"}), &cpu),
            (json!({"cpu": "inf"}), &cpu),
            (json!({"cpu": "1e1"}), &cpu),
            (json!({"cpu": "-1"}), &cpu),
            (json!({"cpu": " 1"}), &cpu),
            (json!({"cpu": "500m"}), &cpu),
            (json!({"cpu": true}), &cpu),
            (json!({"cpu": [1]}), &cpu),
            (json!({"pids": 0}), &pids),
            (json!({"pids": 32769}), &pids),
            (json!({"pids": -1}), &pids),
            (json!({"pids": 1.5}), &pids),
            (json!({"pids": "abc"}), &pids),
            (json!({"pids": "1000000"}), &pids),
            (json!({"pids": true}), &pids),
        ];
        for (v, field) in cases {
            fails(parse_limits(f, Some(&v)), field);
        }
    }

    #[test]
    fn limit_errors_say_what_is_accepted() {
        let m = fails(
            parse_limits("l", Some(&json!({"memory": "256k"}))),
            "l.memory",
        );
        assert!(m.contains("6 MiB"), "{m}");
        let m = fails(
            parse_limits("l", Some(&json!({"memory": "2t"}))),
            "l.memory",
        );
        assert!(m.contains("1 TiB"), "{m}");
        let m = fails(
            parse_limits("l", Some(&json!({"memory": "lots"}))),
            "l.memory",
        );
        assert!(
            m.contains("powers of 1024") && m.contains("\"lots\""),
            "{m}"
        );
        let m = fails(parse_limits("l", Some(&json!({"cpu": 65}))), "l.cpu");
        assert!(m.contains("0.01 to 64"), "{m}");
        let m = fails(parse_limits("l", Some(&json!({"pids": 0}))), "l.pids");
        assert!(m.contains("1..=32768"), "{m}");
        let m = fails(parse_limits("l", Some(&json!({"swap": 1}))), "l.swap");
        assert!(m.contains("memory, cpu and pids"), "{m}");
    }
}
