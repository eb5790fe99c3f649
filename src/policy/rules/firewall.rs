//! Firewall and link changes that can cut the machine off the network: flushing rules, a DROP policy, dropping all
//! input, `nft flush ruleset`, taking links down, flushing addresses or the default route.

use super::{FIREWALL, Inv, Verdict, deny};
use crate::policy::shell::Word;

/// Network changes that would lock everyone (the agent's control channel included) out.
pub(super) fn firewall_rules(inv: &Inv) -> Verdict {
    let name = inv.name.as_str();
    let args = inv.args();
    let texts: Vec<&str> = args.iter().map(Word::text).collect();
    let lock = |what: String| {
        Err(deny(
            FIREWALL,
            format!("`{what}` can cut the machine off the network"),
        ))
    };
    if name.starts_with("iptables") || name.starts_with("ip6tables") {
        for (k, t) in texts.iter().enumerate() {
            if *t == "--flush"
                || t.strip_prefix('-')
                    .is_some_and(|b| !b.starts_with('-') && b.contains('F'))
            {
                return lock(format!("{name} {t}"));
            }
            if (*t == "-P" || *t == "--policy")
                && texts
                    .get(k + 2)
                    .is_some_and(|p| matches!(*p, "DROP" | "REJECT"))
            {
                return lock(format!("{name} -P … DROP"));
            }
        }
        let unqualified = !texts.iter().any(|t| {
            matches!(
                *t,
                "-s" | "--source"
                    | "-p"
                    | "--protocol"
                    | "--dport"
                    | "--sport"
                    | "-i"
                    | "--in-interface"
                    | "-m"
                    | "--match"
                    | "-d"
                    | "--destination"
            )
        });
        let drops = texts
            .windows(2)
            .any(|w| matches!(w, ["-j" | "--jump", "DROP" | "REJECT"]));
        let input = texts.windows(2).any(|w| {
            matches!(
                w,
                ["-A" | "-I" | "--append" | "--insert", "INPUT" | "OUTPUT"]
            )
        });
        if unqualified && drops && input {
            return lock(format!("{name} {}", texts.join(" ")));
        }
        return Ok(());
    }
    match name {
        "nft" => {
            if texts.contains(&"flush") && texts.contains(&"ruleset") {
                return lock("nft flush ruleset".to_string());
            }
            Ok(())
        }
        "ip" => {
            let mut ops = texts.iter().filter(|t| !t.starts_with('-'));
            let obj = ops.next().copied().unwrap_or("");
            let act = ops.next().copied().unwrap_or("");
            let abbrev = |full: &str, x: &str| !x.is_empty() && full.starts_with(x);
            if abbrev("link", obj) && abbrev("set", act) && texts.contains(&"down") {
                return lock(format!("ip link set … down ({})", texts.join(" ")));
            }
            if (abbrev("address", obj) || abbrev("route", obj)) && abbrev("flush", act) {
                return lock(format!("ip {obj} flush"));
            }
            if abbrev("route", obj)
                && (abbrev("delete", act) || act == "del")
                && texts.contains(&"default")
            {
                return lock("ip route del default".to_string());
            }
            Ok(())
        }
        "ifdown" => lock("ifdown".to_string()),
        "ifconfig" if texts.contains(&"down") => lock("ifconfig … down".to_string()),
        "nmcli" => {
            let joined = texts.join(" ");
            if joined.contains("networking off")
                || (joined.contains("dev") && joined.contains("disconnect"))
                || (joined.contains("con") && joined.contains("down"))
            {
                return lock(format!("nmcli {joined}"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::ALLOWED;
    use super::super::testing::{admin, inv, rule_of};
    use super::*;

    fn rule(cmd: &str) -> String {
        rule_of(firewall_rules(&inv(cmd)))
    }

    #[test]
    fn iptables() {
        assert_eq!(rule("iptables -F"), FIREWALL);
        assert_eq!(rule("ip6tables --flush INPUT"), FIREWALL);
        assert_eq!(rule("iptables -t nat -nvF"), FIREWALL);
        assert_eq!(rule("iptables -P INPUT DROP"), FIREWALL);
        assert_eq!(rule("iptables -I INPUT -j REJECT"), FIREWALL);
        assert_eq!(rule("iptables -L -n"), ALLOWED);
        assert_eq!(rule("iptables -P FORWARD ACCEPT"), ALLOWED);
        // Qualified drops are ordinary firewalling.
        assert_eq!(
            rule("iptables -A INPUT -p tcp --dport 8080 -j DROP"),
            ALLOWED
        );
        assert_eq!(rule("iptables -A INPUT -s 10.0.0.5 -j DROP"), ALLOWED);
    }

    #[test]
    fn nft_and_ip() {
        assert_eq!(rule("nft flush ruleset"), FIREWALL);
        assert_eq!(rule("nft list ruleset"), ALLOWED);
        assert_eq!(rule("ip link set eth0 down"), FIREWALL);
        assert_eq!(rule("ip l s dev eth0 down"), FIREWALL);
        assert_eq!(rule("ip addr flush dev eth0"), FIREWALL);
        assert_eq!(rule("ip route del default"), FIREWALL);
        assert_eq!(rule("ip link set eth0 up"), ALLOWED);
        assert_eq!(rule("ip route del 10.1.0.0/16"), ALLOWED);
        assert_eq!(rule("ip -br addr"), ALLOWED);
    }

    #[test]
    fn interfaces() {
        assert_eq!(rule("ifdown eth0"), FIREWALL);
        assert_eq!(rule("ifconfig eth0 down"), FIREWALL);
        assert_eq!(rule("nmcli networking off"), FIREWALL);
        assert_eq!(rule("nmcli con down id office"), FIREWALL);
        assert_eq!(rule("ifconfig eth0"), ALLOWED);
        assert_eq!(rule("nmcli dev status"), ALLOWED);
        assert_eq!(admin("sudo iptables -F"), FIREWALL);
        assert_eq!(admin("iptables -S"), ALLOWED);
    }
}
