//! The rules that override the sampler: keep every failed session, keep long sessions, drop
//! sessions by local or peer port, peer network, or workload (process or executable name,
//! container id). Each looks only at facts
//! of the session itself; which of them both ends of a connection share is in the README
//! ("Sampling").

use std::{net::IpAddr, time::Duration};

use super::Dropped;
use crate::{export::span, session::Session};

/// The rules, as plain values (the command line builds them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Keep every session whose span has an ERROR status (never established, reset,
    /// aborted), whatever the sampler says.
    pub keep_failed: bool,
    /// Keep every session that lasted at least this long.
    pub keep_longer_than: Option<Duration>,
    /// Drop sessions whose local port is one of these.
    pub drop_local_ports: Vec<u16>,
    /// Drop sessions whose peer port is one of these.
    pub drop_peer_ports: Vec<u16>,
    /// Drop sessions whose peer address is in one of these networks.
    pub drop_peer_networks: Vec<Network>,
    /// Drop sessions whose owner's task name (`comm`) or executable's file name
    /// (`process.executable.name`) is one of these.
    pub drop_processes: Vec<String>,
    /// Drop sessions whose owner's container id starts with one of these (a full id, or the
    /// short one `docker ps` shows).
    pub drop_containers: Vec<String>,
}

/// Why a keep rule kept a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepRule {
    /// It failed (`--sample-keep-failed`).
    Failed,
    /// It lasted long enough (`--sample-keep-longer-than`).
    Long,
}

impl KeepRule {
    /// Every keep rule, in the order of the log line.
    pub const ALL: [Self; 2] = [Self::Failed, Self::Long];

    /// `rule="<name>"` on `otel_agent.sessions.kept`, `kept_<name>` in the log.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Long => "long",
        }
    }
}

impl Rules {
    /// Whether no drop rule is set.
    pub fn drops_nothing(&self) -> bool {
        self.drop_local_ports.is_empty()
            && self.drop_peer_ports.is_empty()
            && self.drop_peer_networks.is_empty()
            && self.drop_processes.is_empty()
            && self.drop_containers.is_empty()
    }

    /// The drop rule that matches `session`, if any (the first: ports, peer, workload: its
    /// process or executable name, its container).
    pub fn dropped(&self, session: &Session) -> Option<Dropped> {
        if self.drop_local_ports.contains(&session.local.port())
            || self.drop_peer_ports.contains(&session.remote.port())
        {
            return Some(Dropped::Port);
        }
        let peer = session.remote.ip().to_canonical();
        if self
            .drop_peer_networks
            .iter()
            .any(|network| network.contains(peer))
        {
            return Some(Dropped::Peer);
        }
        let named = |name: &str| self.drop_processes.iter().any(|dropped| dropped == name);
        if named(session.comm.as_str())
            || session.exe.as_deref().is_some_and(named)
            || session.container_id.as_deref().is_some_and(|id| {
                self.drop_containers
                    .iter()
                    .any(|prefix| id.starts_with(prefix.as_str()))
            })
        {
            return Some(Dropped::Process);
        }
        None
    }

    /// The keep rule that matches `session`, if any.
    pub fn kept(&self, session: &Session) -> Option<KeepRule> {
        if self.keep_failed && span::error_message(session).is_some() {
            return Some(KeepRule::Failed);
        }
        match self.keep_longer_than {
            Some(at_least) if session.duration() >= at_least => Some(KeepRule::Long),
            _ => None,
        }
    }
}

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `fd00::/8`; a lone address
/// is a network of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `ADDRESS[/PREFIX]`; an IPv4-mapped IPv6 address is taken as IPv4.
    pub fn parse(text: &str) -> Result<Self, String> {
        let error = || {
            format!(
                "`{text}` is not a network; use an address with a prefix length, like 10.0.0.0/8 or fd00::/8"
            )
        };
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let address = address
            .parse::<IpAddr>()
            .map_err(|_| error())?
            .to_canonical();
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|&prefix| prefix <= bits)
                .ok_or_else(error)?,
            None => bits,
        };
        Ok(Self { address, prefix })
    }

    /// Whether `address` (canonical: IPv4-mapped IPv6 as IPv4) is in the network.
    pub fn contains(&self, address: IpAddr) -> bool {
        let keep = |bits: u32, prefix: u8| -> u128 {
            if prefix == 0 {
                0
            } else {
                u128::MAX << (bits - u32::from(prefix))
            }
        };
        match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = keep(32, self.prefix);
                (u128::from(u32::from(network)) & mask) == (u128::from(u32::from(address)) & mask)
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = keep(128, self.prefix);
                (u128::from(network) & mask) == (u128::from(address) & mask)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Closer, ResetByPeer, tests::client_session};

    #[test]
    fn networks_parse_and_match_ipv4_ipv6_and_mapped_addresses() {
        let net = |text| Network::parse(text).unwrap();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap().to_canonical();
        assert!(net("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(net("::ffff:10.0.0.0/8").contains(ip("10.1.2.3")));
        assert!(net("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!net("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(net("fd00::/8").contains(ip("fd12::1")));
        assert!(!net("fd00::/8").contains(ip("fe80::1")));
        assert!(net("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(!net("0.0.0.0/0").contains(ip("::1")));
        assert!(net("::/0").contains(ip("::1")));
        for bad in ["10.0.0.0/33", "fd00::/129", "10.0.0/8", "x", "10.0.0.0/"] {
            assert_eq!(
                Network::parse(bad),
                Err(format!(
                    "`{bad}` is not a network; use an address with a prefix length, like 10.0.0.0/8 or fd00::/8"
                ))
            );
        }
    }

    #[test]
    fn drop_rules_match_ports_peers_and_processes() {
        // The fixture: 127.0.0.1:40000 -> 127.0.0.1:8080 (connected), comm `curl`.
        let session = client_session();
        let dropped = |edit: fn(&mut Rules)| {
            let mut rules = Rules::default();
            edit(&mut rules);
            rules.dropped(&session)
        };
        assert_eq!(dropped(|_| {}), None);
        assert_eq!(
            dropped(|r| r.drop_local_ports = vec![40_000]),
            Some(Dropped::Port)
        );
        assert_eq!(dropped(|r| r.drop_local_ports = vec![8080]), None);
        assert_eq!(
            dropped(|r| r.drop_peer_ports = vec![53, 8080]),
            Some(Dropped::Port)
        );
        assert_eq!(
            dropped(|r| r.drop_peer_networks = vec![Network::parse("127.0.0.0/8").unwrap()]),
            Some(Dropped::Peer)
        );
        assert_eq!(
            dropped(|r| r.drop_peer_networks = vec![Network::parse("10.0.0.0/8").unwrap()]),
            None
        );
        assert_eq!(
            dropped(|r| r.drop_processes = vec!["curl".into()]),
            Some(Dropped::Process)
        );
        assert_eq!(dropped(|r| r.drop_processes = vec!["cur".into()]), None);
    }

    #[test]
    fn drop_rules_match_the_executable_and_the_container() {
        let session = Session {
            exe: Some("a-long-executable-name".into()),
            comm: "a-long-executab".to_owned(),
            container_id: Some("ab12cd34ef56".repeat(6)[..64].into()),
            ..client_session()
        };
        let dropped = |edit: fn(&mut Rules)| {
            let mut rules = Rules::default();
            edit(&mut rules);
            rules.dropped(&session)
        };
        // The executable's full name, or the comm the kernel cut at 15 bytes.
        assert_eq!(
            dropped(|r| r.drop_processes = vec!["a-long-executable-name".into()]),
            Some(Dropped::Process)
        );
        assert_eq!(
            dropped(|r| r.drop_processes = vec!["a-long-executab".into()]),
            Some(Dropped::Process)
        );
        assert_eq!(
            dropped(|r| r.drop_processes = vec!["a-long-executable".into()]),
            None
        );
        // The full container id, or its short form.
        assert_eq!(
            dropped(|r| r.drop_containers = vec!["ab12cd34ef56".repeat(6)[..64].to_owned()]),
            Some(Dropped::Process)
        );
        assert_eq!(
            dropped(|r| r.drop_containers = vec!["ab12cd34ef56".into()]),
            Some(Dropped::Process)
        );
        assert_eq!(
            dropped(|r| r.drop_containers = vec!["cd34ef56ab12".into()]),
            None
        );
        // A host process has no container: no container rule drops it.
        assert_eq!(
            Rules {
                drop_containers: vec!["ab12cd34ef56".into()],
                ..Rules::default()
            }
            .dropped(&client_session()),
            None
        );
    }

    #[test]
    fn keep_rules_match_failures_and_long_sessions() {
        let rules = Rules {
            keep_failed: true,
            keep_longer_than: Some(Duration::from_secs(60)),
            ..Rules::default()
        };
        let mut session = client_session();
        session.end = session.start + Duration::from_secs(1);
        assert_eq!(rules.kept(&session), None);
        session.end = session.start + Duration::from_secs(60);
        assert_eq!(rules.kept(&session), Some(KeepRule::Long));
        session.end = session.start + Duration::from_secs(1);
        for failed in [
            |s: &mut Session| s.established = false,
            |s: &mut Session| s.reset = Some(ResetByPeer),
            |s: &mut Session| s.closer = Closer::Aborted,
        ] {
            let mut session = session.clone();
            failed(&mut session);
            assert_eq!(rules.kept(&session), Some(KeepRule::Failed));
            let off = Rules {
                keep_failed: false,
                ..rules.clone()
            };
            assert_eq!(off.kept(&session), None);
        }
    }
}
