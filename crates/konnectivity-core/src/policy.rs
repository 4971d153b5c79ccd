//! Destination policy (a konnectivity-rs addition; upstream has none): which
//! destinations a dial may reach, as allowed CIDRs and ports. Empty lists allow
//! everything (upstream's behaviour).
//!
//! The server checks the dial address before choosing an agent (a host name is denied
//! when CIDRs are configured, since only the agent resolves names); the agent checks the
//! resolved address before connecting.
use std::net::{IpAddr, SocketAddr};

use crate::select::Cidr;

/// Allowed destinations.
#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy {
    cidrs: Vec<Cidr>,
    ports: Vec<(u16, u16)>,
}

impl DestinationPolicy {
    /// Parses `cidrs` (`10.0.0.0/8`, a bare IP means /32 or /128) and `ports` (`10250`,
    /// `30000-32767`). The error names the bad item.
    pub fn parse(cidrs: &[String], ports: &[String]) -> Result<Self, String> {
        let mut p = DestinationPolicy::default();
        for c in cidrs.iter().map(|c| c.trim()).filter(|c| !c.is_empty()) {
            let cidr = if c.contains('/') {
                Cidr::parse(c)
            } else {
                c.parse::<IpAddr>().ok().and_then(|ip| {
                    Cidr::parse(&format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }))
                })
            };
            p.cidrs
                .push(cidr.ok_or_else(|| format!("invalid CIDR {c:?}"))?);
        }
        for r in ports.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
            let bad = || format!("invalid port or port range {r:?}");
            let (lo, hi) = match r.split_once('-') {
                Some((a, b)) => (
                    a.trim().parse::<u16>().map_err(|_| bad())?,
                    b.trim().parse::<u16>().map_err(|_| bad())?,
                ),
                None => {
                    let v = r.parse::<u16>().map_err(|_| bad())?;
                    (v, v)
                }
            };
            if lo == 0 || lo > hi {
                return Err(bad());
            }
            p.ports.push((lo, hi));
        }
        Ok(p)
    }

    /// Whether anything is restricted.
    pub fn is_open(&self) -> bool {
        self.cidrs.is_empty() && self.ports.is_empty()
    }

    fn port_ok(&self, port: u16) -> bool {
        self.ports.is_empty()
            || self
                .ports
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&port))
    }

    fn ip_ok(&self, ip: IpAddr) -> bool {
        self.cidrs.is_empty() || self.cidrs.iter().any(|c| c.contains(ip))
    }

    /// Checks a dial address (`host:port`) before it is sent to an agent.
    pub fn check_address(&self, address: &str) -> Result<(), String> {
        if self.is_open() {
            return Ok(());
        }
        let deny = |why: &str| {
            Err(format!(
                "dial to {address} denied by destination policy: {why}"
            ))
        };
        let Some((host, port)) = address.rsplit_once(':') else {
            return deny("no port");
        };
        let Ok(port) = port.parse::<u16>() else {
            return deny("bad port");
        };
        if !self.port_ok(port) {
            return deny("port not allowed");
        }
        if self.cidrs.is_empty() {
            return Ok(());
        }
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) if self.ip_ok(ip) => Ok(()),
            Ok(_) => deny("address not in an allowed CIDR"),
            Err(_) => deny("host names are not allowed when destination CIDRs are restricted"),
        }
    }

    /// Checks a resolved address (the agent, after name resolution).
    pub fn check_resolved(&self, addr: SocketAddr) -> Result<(), String> {
        if self.port_ok(addr.port()) && self.ip_ok(addr.ip()) {
            Ok(())
        } else {
            Err(format!(
                "dial to {addr} denied by the agent's destination policy"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(c: &[&str], ports: &[&str]) -> DestinationPolicy {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        DestinationPolicy::parse(&s(c), &s(ports)).unwrap()
    }

    #[test]
    fn an_empty_policy_allows_everything() {
        assert!(p(&[], &[]).check_address("anything.example:1").is_ok());
    }

    #[test]
    fn kubelet_only_policy_allows_node_ips_on_10250() {
        let pol = p(&["10.0.0.0/16", "fd00::/64"], &["10250"]);
        assert!(pol.check_address("10.0.3.4:10250").is_ok());
        assert!(pol.check_address("[fd00::5]:10250").is_ok());
        assert!(
            pol.check_address("10.0.3.4:22")
                .unwrap_err()
                .contains("port not allowed")
        );
        assert!(
            pol.check_address("10.1.0.1:10250")
                .unwrap_err()
                .contains("not in an allowed CIDR")
        );
        assert!(
            pol.check_address("evil.example:10250")
                .unwrap_err()
                .contains("host names")
        );
        assert!(
            pol.check_resolved("10.0.0.9:10250".parse().unwrap())
                .is_ok()
        );
        assert!(
            pol.check_resolved("127.0.0.1:10250".parse().unwrap())
                .is_err()
        );
    }

    #[test]
    fn port_ranges_and_bad_items() {
        let pol = p(&[], &["30000-32767"]);
        assert!(pol.check_address("h:31000").is_ok());
        assert!(pol.check_address("h:29999").is_err());
        assert!(
            DestinationPolicy::parse(&["10.0.0.0/99".into()], &[])
                .unwrap_err()
                .contains("10.0.0.0/99")
        );
        assert!(DestinationPolicy::parse(&[], &["9-1".into()]).is_err());
    }
}
