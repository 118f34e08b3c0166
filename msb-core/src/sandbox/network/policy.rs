//! Network policy: which destinations code inside a sandbox may reach.
//!
//! A policy is an ordered list of rules and a default action. A destination
//! is matched against the rules in order and the first match decides; then
//! the cloud metadata address is refused (unless a rule before allowed it);
//! then the default action applies.
//!
//! ```
//! use msb_core::sandbox::network::{Cidr, DestinationGroup, NetworkPolicy};
//!
//! // Everything but the host's loopback services and the private ranges.
//! let policy = NetworkPolicy::allow_all()
//!     .deny(DestinationGroup::Loopback)
//!     .deny(DestinationGroup::Private);
//! assert!(!policy.allows_loopback());
//!
//! // Nothing but one private network.
//! let policy = NetworkPolicy::deny_all().allow("10.1.0.0/16".parse::<Cidr>().unwrap());
//! assert!(!policy.allows_loopback());
//! ```
//!
//! # Enforcement (namespace isolation)
//!
//! The sandbox process compiles the policy into routing policy rules
//! (`ip rule`: `prohibit`, `lookup main`, `goto`) of the sandbox's network
//! namespace, installed from the host before the agent runs, and removes
//! `CAP_NET_ADMIN` and `CAP_NET_RAW` from the sandbox's bounding set, so
//! root inside can neither change the rules nor send raw frames around
//! them. A refused destination fails at once with `EACCES` ("Permission
//! denied") inside the sandbox: no packet leaves its namespace. The
//! [`DestinationGroup::Loopback`] group is the host's loopback as pasta
//! maps it onto the namespace's gateway address: denied, pasta runs with
//! `--no-map-gw` and the gateway address itself is refused.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What a rule (or the default) does with a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Connections may be made.
    Allow,
    /// Connections are refused inside the sandbox (`EACCES`).
    Deny,
}

/// A named set of destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationGroup {
    /// The host's own loopback services, reached through the gateway
    /// address pasta maps onto the host's `127.0.0.1`/`::1`. (The sandbox's
    /// own `lo` is always reachable.)
    Loopback,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`) and unique local IPv6
    /// (`fc00::/7`).
    Private,
    /// `169.254/16` and `fe80::/10` (includes the metadata address).
    LinkLocal,
    /// The cloud metadata service: `169.254.169.254` and `fd00:ec2::254`.
    Metadata,
    /// Everything not in the groups above.
    Public,
}

impl DestinationGroup {
    /// The address blocks of the group (none for [`Loopback`](Self::Loopback),
    /// which is the gateway address, and [`Public`](Self::Public), which is
    /// the complement of the others).
    pub fn blocks(self) -> Vec<Cidr> {
        let v4 = |a, b, c, d, prefix| Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        };
        let v6 = |addr: Ipv6Addr, prefix| Cidr {
            addr: IpAddr::V6(addr),
            prefix,
        };
        match self {
            DestinationGroup::Loopback | DestinationGroup::Public => Vec::new(),
            DestinationGroup::Private => vec![
                v4(10, 0, 0, 0, 8),
                v4(172, 16, 0, 0, 12),
                v4(192, 168, 0, 0, 16),
                v6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
            ],
            DestinationGroup::LinkLocal => vec![
                v4(169, 254, 0, 0, 16),
                v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
            ],
            DestinationGroup::Metadata => vec![
                v4(169, 254, 169, 254, 32),
                v6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254), 128),
            ],
        }
    }
}

/// An address block, `10.0.0.0/8` or `fc00::/7` (a bare address is a
/// single-address block). Host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The block of `addr`/`prefix`; `InvalidCidr` when the prefix is too
    /// long or host bits are set.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr> {
        let text = format!("{addr}/{prefix}");
        let invalid = |reason| Error::InvalidCidr {
            value: text.clone(),
            reason,
        };
        let bits = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > bits {
            return Err(invalid("the prefix length is too long for the address"));
        }
        let host_bits = |raw: u128, width: u32| {
            let keep = u32::from(prefix);
            let mask = 1u128.checked_shl(width - keep).map_or(u128::MAX, |m| m - 1);
            keep < width && raw & mask != 0
        };
        let set = match addr {
            IpAddr::V4(a) => host_bits(u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => host_bits(u128::from(a), 128),
        };
        if set {
            return Err(invalid("host bits are set after the prefix"));
        }
        Ok(Cidr { addr, prefix })
    }

    /// The first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn is_v6(&self) -> bool {
        self.addr.is_ipv6()
    }
}

impl FromStr for Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Cidr> {
        let invalid = |reason| Error::InvalidCidr {
            value: s.to_owned(),
            reason,
        };
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| invalid("not an IP address"))?;
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| invalid("the prefix length is not a number"))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Cidr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// An address block.
    Cidr(Cidr),
    /// A named group.
    Group(DestinationGroup),
}

impl From<Cidr> for Destination {
    fn from(c: Cidr) -> Destination {
        Destination::Cidr(c)
    }
}

impl From<DestinationGroup> for Destination {
    fn from(g: DestinationGroup) -> Destination {
        Destination::Group(g)
    }
}

/// One rule of a [`NetworkPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Allow or deny.
    pub action: Action,
    /// What it matches.
    pub destination: Destination,
}

/// Which destinations a sandbox may reach; see the module docs. The
/// default is [`allow_all`](Self::allow_all), which still refuses the
/// metadata address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// Rules, first match wins.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// What happens to destinations no rule matches.
    pub default: Action,
}

impl Default for NetworkPolicy {
    fn default() -> NetworkPolicy {
        NetworkPolicy::allow_all()
    }
}

/// Priority of the rule deciding the gateway address (the host's loopback).
const GATEWAY_PRIORITY: u32 = 200;
/// Priority of the first user rule's block; each rule gets [`BLOCK`].
const RULES_BASE: u32 = 1000;
const BLOCK: u32 = 100;
/// Priority of the implicit metadata refusal.
const METADATA_PRIORITY: u32 = 30000;
/// Priority of the default action.
const DEFAULT_PRIORITY: u32 = 30100;

impl NetworkPolicy {
    /// Everything may be reached, except the metadata address (allow it
    /// explicitly with `.allow(DestinationGroup::Metadata)`).
    pub fn allow_all() -> NetworkPolicy {
        NetworkPolicy {
            rules: Vec::new(),
            default: Action::Allow,
        }
    }

    /// Nothing outside the sandbox may be reached (its own `lo` still works,
    /// and so do published ports).
    pub fn deny_all() -> NetworkPolicy {
        NetworkPolicy {
            rules: Vec::new(),
            default: Action::Deny,
        }
    }

    /// Appends a rule allowing `destination`.
    pub fn allow(mut self, destination: impl Into<Destination>) -> NetworkPolicy {
        self.rules.push(Rule {
            action: Action::Allow,
            destination: destination.into(),
        });
        self
    }

    /// Appends a rule denying `destination`.
    pub fn deny(mut self, destination: impl Into<Destination>) -> NetworkPolicy {
        self.rules.push(Rule {
            action: Action::Deny,
            destination: destination.into(),
        });
        self
    }

    /// Whether the host's loopback (the gateway mapping) is reachable: the
    /// first rule naming [`DestinationGroup::Loopback`] decides, else the
    /// default.
    pub fn allows_loopback(&self) -> bool {
        self.rules
            .iter()
            .find(|r| r.destination == Destination::Group(DestinationGroup::Loopback))
            .map_or(self.default, |r| r.action)
            == Action::Allow
    }

    /// The `ip rule add ...` commands (for `ip -batch -`) of one family,
    /// without the gateway rule (see [`gateway_rule`](Self::gateway_rule)).
    pub fn ip_rules(&self, v6: bool) -> Vec<String> {
        let zero = if v6 { "::/0" } else { "0.0.0.0/0" };
        let verdict = |a: Action| match a {
            Action::Allow => "lookup main",
            Action::Deny => "prohibit",
        };
        let family = |blocks: Vec<Cidr>| -> Vec<Cidr> {
            blocks.into_iter().filter(|c| c.is_v6() == v6).collect()
        };
        let mut out = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let base = RULES_BASE + BLOCK * i as u32;
            let next = if i + 1 == self.rules.len() {
                METADATA_PRIORITY
            } else {
                base + BLOCK
            };
            let action = verdict(rule.action);
            match rule.destination {
                Destination::Cidr(c) if c.is_v6() == v6 => {
                    out.push(format!("rule add priority {base} to {c} {action}"));
                }
                Destination::Cidr(_) | Destination::Group(DestinationGroup::Loopback) => {}
                Destination::Group(DestinationGroup::Public) => {
                    // Everything but the other groups: those skip ahead.
                    let mut prio = base;
                    for c in family(
                        [
                            DestinationGroup::Private,
                            DestinationGroup::LinkLocal,
                            DestinationGroup::Metadata,
                        ]
                        .into_iter()
                        .flat_map(DestinationGroup::blocks)
                        .collect(),
                    ) {
                        out.push(format!("rule add priority {prio} to {c} goto {next}"));
                        prio += 1;
                    }
                    out.push(format!("rule add priority {prio} to {zero} {action}"));
                }
                Destination::Group(g) => {
                    for (j, c) in family(g.blocks()).into_iter().enumerate() {
                        let prio = base + j as u32;
                        out.push(format!("rule add priority {prio} to {c} {action}"));
                    }
                }
            }
        }
        for c in family(DestinationGroup::Metadata.blocks()) {
            out.push(format!(
                "rule add priority {METADATA_PRIORITY} to {c} prohibit"
            ));
        }
        out.push(format!(
            "rule add priority {DEFAULT_PRIORITY} to {zero} {}",
            verdict(self.default)
        ));
        out
    }

    /// The `ip rule add ...` command deciding the gateway address `gw`
    /// (pasta's mapping of the host's loopback): ahead of every other rule.
    pub fn gateway_rule(&self, gw: IpAddr) -> String {
        let (action, bits) = (
            if self.allows_loopback() {
                "lookup main"
            } else {
                "prohibit"
            },
            if gw.is_ipv4() { 32 } else { 128 },
        );
        format!("rule add priority {GATEWAY_PRIORITY} to {gw}/{bits} {action}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_check_host_bits() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(
            "169.254.169.254".parse::<Cidr>().unwrap().to_string(),
            "169.254.169.254/32"
        );
        assert_eq!("fc00::/7".parse::<Cidr>().unwrap().prefix(), 7);
        assert!(matches!(
            "10.0.0.1/8".parse::<Cidr>(),
            Err(Error::InvalidCidr { .. })
        ));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
        assert!("0.0.0.0/0".parse::<Cidr>().is_ok());
        assert!("::/0".parse::<Cidr>().is_ok());
    }

    #[test]
    fn default_policy_refuses_only_metadata() {
        let rules = NetworkPolicy::default().ip_rules(false);
        assert_eq!(
            rules,
            [
                "rule add priority 30000 to 169.254.169.254/32 prohibit",
                "rule add priority 30100 to 0.0.0.0/0 lookup main",
            ]
        );
        assert!(NetworkPolicy::default().allows_loopback());
    }

    #[test]
    fn public_skips_the_other_groups() {
        let policy = NetworkPolicy::deny_all().allow(DestinationGroup::Public);
        let rules = policy.ip_rules(false);
        assert!(rules.contains(&"rule add priority 1000 to 10.0.0.0/8 goto 30000".to_owned()));
        assert!(rules.contains(&"rule add priority 1005 to 0.0.0.0/0 lookup main".to_owned()));
        assert_eq!(
            rules.last().unwrap(),
            "rule add priority 30100 to 0.0.0.0/0 prohibit"
        );
        assert!(!policy.allows_loopback());
    }

    #[test]
    fn rules_keep_their_order_and_family() {
        let policy = NetworkPolicy::allow_all()
            .allow("10.1.0.0/16".parse::<Cidr>().unwrap())
            .deny(DestinationGroup::Private)
            .deny(DestinationGroup::Loopback);
        let v4 = policy.ip_rules(false);
        assert_eq!(v4[0], "rule add priority 1000 to 10.1.0.0/16 lookup main");
        assert_eq!(v4[1], "rule add priority 1100 to 10.0.0.0/8 prohibit");
        let v6 = policy.ip_rules(true);
        assert_eq!(v6[0], "rule add priority 1100 to fc00::/7 prohibit");
        assert!(!policy.allows_loopback());
        assert_eq!(
            policy.gateway_rule("192.0.2.1".parse().unwrap()),
            "rule add priority 200 to 192.0.2.1/32 prohibit"
        );
    }

    #[test]
    fn metadata_can_be_allowed_explicitly() {
        let rules = NetworkPolicy::allow_all()
            .allow(DestinationGroup::Metadata)
            .ip_rules(false);
        assert_eq!(
            rules[0],
            "rule add priority 1000 to 169.254.169.254/32 lookup main"
        );
    }

    #[test]
    fn policies_round_trip_through_json() {
        let policy = NetworkPolicy::deny_all()
            .allow("10.0.0.0/8".parse::<Cidr>().unwrap())
            .allow(DestinationGroup::Loopback);
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(
            serde_json::from_str::<NetworkPolicy>(&json).unwrap(),
            policy
        );
    }
}
