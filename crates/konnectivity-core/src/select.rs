//! Backend tables and proxy strategies: which agent stream serves a dial.
//!
//! One [`BackendTable`] holds every connected agent stream under the keys each
//! configured strategy uses (spec §5): `default` by agent ID, `destHost` by the agent's
//! `host`/`ipv4`/`ipv6` identifiers, `defaultRoute` by agent ID for agents announcing
//! `default-route=true`. Strategies are tried in flag order; the first hit wins.
//!
//! Beyond upstream, `destHost` also routes by `cidr=` identifiers: when no exact host
//! key matches and the destination is an IP address, the agent with the longest
//! announced prefix containing it is chosen.
use std::collections::HashMap;
use std::net::IpAddr;

use rand::Rng;

/// A proxy strategy (`--proxy-strategies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Any agent, chosen at random.
    Default,
    /// The agent whose identifiers name the destination host.
    DestHost,
    /// Any agent that announced `default-route=true`, chosen at random.
    DefaultRoute,
}

impl Strategy {
    /// The flag/metric label name.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Default => "default",
            Strategy::DestHost => "destHost",
            Strategy::DefaultRoute => "defaultRoute",
        }
    }
}

/// What the table needs to know about a backend handle.
pub trait Candidate {
    /// Unique per agent stream (not per agent ID).
    fn stream_id(&self) -> u64;
    /// Whether the stream announced DRAIN (or was retired).
    fn is_draining(&self) -> bool;
}

/// The routing identity of one agent stream, from its metadata.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// `agentid`.
    pub agent_id: String,
    /// `host=`, `ipv4=` and `ipv6=` values: exact destination host keys.
    pub hosts: Vec<String>,
    /// `cidr=` values that parsed as `addr/prefix`.
    pub cidrs: Vec<Cidr>,
    /// `default-route=true`.
    pub default_route: bool,
}

/// An IP prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Parses `10.0.0.0/8` or `fd00::/64`; `None` if malformed.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.split_once('/')?;
        let addr: IpAddr = a.trim().parse().ok()?;
        let prefix: u8 = p.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }
    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl<T: Candidate + ?Sized> Candidate for std::sync::Arc<T> {
    fn stream_id(&self) -> u64 {
        (**self).stream_id()
    }
    fn is_draining(&self) -> bool {
        (**self).is_draining()
    }
}

#[derive(Debug)]
struct Keyed<B> {
    /// Keys in first-registration order, so a random start index is meaningful.
    order: Vec<String>,
    /// Streams under each key, in registration order.
    streams: HashMap<String, Vec<B>>,
}

impl<B: Candidate + Clone> Keyed<B> {
    fn new() -> Self {
        Self {
            order: Vec::new(),
            streams: HashMap::new(),
        }
    }
    fn add(&mut self, key: &str, b: B) {
        let list = self.streams.entry(key.to_owned()).or_default();
        if list.is_empty() {
            self.order.push(key.to_owned());
        }
        list.push(b);
    }
    fn remove(&mut self, key: &str, stream_id: u64) {
        if let Some(list) = self.streams.get_mut(key) {
            list.retain(|b| b.stream_id() != stream_id);
            if list.is_empty() {
                self.streams.remove(key);
                self.order.retain(|k| k != key);
            }
        }
    }
    fn len(&self) -> usize {
        self.order.len()
    }
    /// Random key, first stream of each key, first non-draining; else first draining.
    fn random(&self, rng: &mut impl Rng) -> Option<B> {
        if self.order.is_empty() {
            return None;
        }
        let start = rng.random_range(0..self.order.len());
        let mut fallback = None;
        for i in 0..self.order.len() {
            let key = &self.order[(start + i) % self.order.len()];
            if let Some(b) = self.streams.get(key).and_then(|l| l.first()) {
                if !b.is_draining() {
                    return Some(b.clone());
                }
                fallback.get_or_insert_with(|| b.clone());
            }
        }
        fallback
    }
    /// The first stream of every key, in registration order (the candidates of
    /// [`Keyed::random`]).
    fn firsts(&self) -> Vec<B> {
        self.order
            .iter()
            .filter_map(|k| self.streams.get(k).and_then(|l| l.first()).cloned())
            .collect()
    }
    /// Streams under `key` in registration order; first non-draining, else the first.
    fn exact(&self, key: &str) -> Option<B> {
        let list = self.streams.get(key)?;
        list.iter()
            .find(|b| !b.is_draining())
            .or_else(|| list.first())
            .cloned()
    }
}

/// What [`BackendTable::explain`] found for a destination.
#[derive(Debug, Clone, PartialEq)]
pub enum Route<B> {
    /// `destHost`: a stream announced the host exactly (`host=`, `ipv4=`, `ipv6=`).
    Host(B),
    /// `destHost`: the longest announced `cidr=` containing the destination IP.
    Cidr(Cidr, B),
    /// `default` or `defaultRoute`: one of these streams at random (non-draining
    /// first).
    Random(Strategy, Vec<B>),
    /// No strategy has a candidate: `No agent available`.
    NoAgent,
}

/// Every connected agent stream, indexed for each configured strategy.
#[derive(Debug)]
pub struct BackendTable<B> {
    strategies: Vec<Strategy>,
    by_agent: Keyed<B>,
    by_host: Keyed<B>,
    by_route: Keyed<B>,
    /// (prefix, stream) for `cidr=` routing, in registration order.
    cidrs: Vec<(Cidr, B)>,
    idents: HashMap<u64, Identity>,
}

impl<B: Candidate + Clone> BackendTable<B> {
    /// A table for the given ordered strategies.
    pub fn new(strategies: Vec<Strategy>) -> Self {
        Self {
            strategies,
            by_agent: Keyed::new(),
            by_host: Keyed::new(),
            by_route: Keyed::new(),
            cidrs: Vec::new(),
            idents: HashMap::new(),
        }
    }

    /// Registers a stream with every strategy.
    pub fn add(&mut self, b: B, ident: Identity) {
        self.by_agent.add(&ident.agent_id, b.clone());
        for h in &ident.hosts {
            self.by_host.add(h, b.clone());
        }
        if ident.default_route {
            self.by_route.add(&ident.agent_id, b.clone());
        }
        for c in &ident.cidrs {
            self.cidrs.push((*c, b.clone()));
        }
        self.idents.insert(b.stream_id(), ident);
    }

    /// Removes exactly this stream (other streams of the same agent ID stay).
    pub fn remove(&mut self, stream_id: u64) {
        let Some(ident) = self.idents.remove(&stream_id) else {
            return;
        };
        self.by_agent.remove(&ident.agent_id, stream_id);
        for h in &ident.hosts {
            self.by_host.remove(h, stream_id);
        }
        self.by_route.remove(&ident.agent_id, stream_id);
        self.cidrs.retain(|(_, b)| b.stream_id() != stream_id);
    }

    /// Picks a backend for a destination host (port already stripped).
    pub fn pick(&self, host: &str, rng: &mut impl Rng) -> Option<B> {
        self.strategies.iter().find_map(|s| match s {
            Strategy::Default => self.by_agent.random(rng),
            Strategy::DefaultRoute => self.by_route.random(rng),
            Strategy::DestHost => self.by_host.exact(host).or_else(|| self.by_cidr(host)),
        })
    }

    fn by_cidr(&self, host: &str) -> Option<B> {
        self.cidr_match(host).map(|(_, b)| b)
    }

    /// The longest announced prefix containing `host` (an IP), a non-draining stream
    /// preferred among equal prefixes.
    fn cidr_match(&self, host: &str) -> Option<(Cidr, B)> {
        let ip: IpAddr = host.parse().ok()?;
        let mut best: Option<(&Cidr, &B)> = None;
        for (c, b) in &self.cidrs {
            if !c.contains(ip) {
                continue;
            }
            let better = match best {
                None => true,
                Some((bc, bb)) => {
                    c.prefix > bc.prefix
                        || (c.prefix == bc.prefix && bb.is_draining() && !b.is_draining())
                }
            };
            if better {
                best = Some((c, b));
            }
        }
        best.map(|(c, b)| (*c, b.clone()))
    }

    /// Why [`BackendTable::pick`] would choose what it chooses for `host`: the same
    /// strategies in the same order, with the stream it would take (exact host or
    /// CIDR) or the streams it would choose among at random. Not on the dial path (it
    /// allocates); `/status?explain=` and `konnectivity doctor` use it.
    pub fn explain(&self, host: &str) -> Route<B> {
        for s in &self.strategies {
            match s {
                Strategy::DestHost => {
                    if let Some(b) = self.by_host.exact(host) {
                        return Route::Host(b);
                    }
                    if let Some((cidr, b)) = self.cidr_match(host) {
                        return Route::Cidr(cidr, b);
                    }
                }
                Strategy::Default | Strategy::DefaultRoute => {
                    let keyed = if *s == Strategy::Default {
                        &self.by_agent
                    } else {
                        &self.by_route
                    };
                    let among = keyed.firsts();
                    if !among.is_empty() {
                        return Route::Random(*s, among);
                    }
                }
            }
        }
        Route::NoAgent
    }

    /// Number of keys held for a strategy (the `ready_backends` gauge).
    pub fn keys(&self, s: Strategy) -> usize {
        match s {
            Strategy::Default => self.by_agent.len(),
            Strategy::DestHost => self.by_host.len(),
            Strategy::DefaultRoute => self.by_route.len(),
        }
    }

    /// Ready iff the first strategy holds at least one key (spec §5.1).
    pub fn ready(&self) -> bool {
        self.strategies.first().is_some_and(|s| self.keys(*s) > 0)
    }

    /// The configured strategies.
    pub fn strategies(&self) -> &[Strategy] {
        &self.strategies
    }

    /// Every registered stream with its identity, in no particular order.
    pub fn entries(&self) -> Vec<(B, Identity)> {
        let mut out = Vec::with_capacity(self.idents.len());
        for list in self.by_agent.streams.values() {
            for b in list {
                if let Some(i) = self.idents.get(&b.stream_id()) {
                    out.push((b.clone(), i.clone()));
                }
            }
        }
        out
    }

    /// Number of registered streams.
    pub fn streams(&self) -> usize {
        self.idents.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Clone, Debug)]
    struct B(u64, Rc<Cell<bool>>);
    impl Candidate for B {
        fn stream_id(&self) -> u64 {
            self.0
        }
        fn is_draining(&self) -> bool {
            self.1.get()
        }
    }
    fn b(id: u64) -> B {
        B(id, Rc::new(Cell::new(false)))
    }
    fn ident(agent: &str, hosts: &[&str]) -> Identity {
        Identity {
            agent_id: agent.into(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn dest_host_routes_to_the_named_agent_and_falls_back_to_default() {
        let mut t = BackendTable::new(vec![Strategy::DestHost, Strategy::Default]);
        t.add(b(1), ident("a", &["10.0.0.1", "node-a"]));
        t.add(b(2), ident("b", &["10.0.0.2"]));
        let mut rng = rand::rng();
        assert_eq!(t.pick("10.0.0.2", &mut rng).unwrap().0, 2);
        assert_eq!(t.pick("node-a", &mut rng).unwrap().0, 1);
        assert!(t.pick("10.9.9.9", &mut rng).is_some());
        assert!(t.ready());
    }

    #[test]
    fn cidr_identifiers_route_pod_ips_by_longest_prefix() {
        let mut t = BackendTable::new(vec![Strategy::DestHost]);
        let mut i1 = ident("a", &[]);
        i1.cidrs.push(Cidr::parse("10.244.0.0/16").unwrap());
        let mut i2 = ident("b", &[]);
        i2.cidrs.push(Cidr::parse("10.244.2.0/24").unwrap());
        t.add(b(1), i1);
        t.add(b(2), i2);
        let mut rng = rand::rng();
        assert_eq!(t.pick("10.244.2.17", &mut rng).unwrap().0, 2);
        assert_eq!(t.pick("10.244.3.1", &mut rng).unwrap().0, 1);
        assert!(t.pick("192.168.1.1", &mut rng).is_none());
    }

    #[test]
    fn explain_names_what_pick_would_take_and_why() {
        let mut t = BackendTable::new(vec![
            Strategy::DestHost,
            Strategy::DefaultRoute,
            Strategy::Default,
        ]);
        let mut a = ident("a", &["10.0.0.1"]);
        a.cidrs.push(Cidr::parse("10.244.1.0/24").unwrap());
        let mut r = ident("r", &[]);
        r.default_route = true;
        t.add(b(1), a);
        t.add(b(2), r);
        let mut rng = rand::rng();
        let id = |r: Route<B>| match r {
            Route::Host(b) => format!("host {}", b.0),
            Route::Cidr(c, b) => format!("cidr {c} {}", b.0),
            Route::Random(s, bs) => format!(
                "{} {:?}",
                s.name(),
                bs.iter().map(|b| b.0).collect::<Vec<_>>()
            ),
            Route::NoAgent => "none".into(),
        };
        assert_eq!(id(t.explain("10.0.0.1")), "host 1");
        assert_eq!(t.pick("10.0.0.1", &mut rng).unwrap().0, 1);
        assert_eq!(id(t.explain("10.244.1.9")), "cidr 10.244.1.0/24 1");
        assert_eq!(t.pick("10.244.1.9", &mut rng).unwrap().0, 1);
        assert_eq!(id(t.explain("10.9.9.9")), "defaultRoute [2]");
        assert_eq!(t.pick("10.9.9.9", &mut rng).unwrap().0, 2);
        t.remove(2);
        assert_eq!(id(t.explain("10.9.9.9")), "default [1]");
        let only_dest = BackendTable::<B>::new(vec![Strategy::DestHost]);
        assert_eq!(id(only_dest.explain("10.0.0.1")), "none");
    }

    #[test]
    fn draining_agents_are_only_a_fallback() {
        let mut t = BackendTable::new(vec![Strategy::Default]);
        let a = b(1);
        t.add(a.clone(), ident("a", &[]));
        t.add(b(2), ident("b", &[]));
        a.1.set(true);
        let mut rng = rand::rng();
        for _ in 0..50 {
            assert_eq!(t.pick("x", &mut rng).unwrap().0, 2);
        }
        t.remove(2);
        assert_eq!(t.pick("x", &mut rng).unwrap().0, 1);
    }

    #[test]
    fn removing_one_stream_keeps_the_other_stream_of_the_same_agent() {
        let mut t = BackendTable::new(vec![Strategy::Default]);
        t.add(b(1), ident("a", &[]));
        t.add(b(2), ident("a", &[]));
        assert_eq!(t.keys(Strategy::Default), 1);
        t.remove(1);
        let mut rng = rand::rng();
        assert_eq!(t.pick("x", &mut rng).unwrap().0, 2);
        t.remove(2);
        assert!(!t.ready());
        assert!(t.pick("x", &mut rng).is_none());
    }

    #[test]
    fn readiness_looks_only_at_the_first_strategy() {
        let mut t = BackendTable::new(vec![Strategy::DestHost, Strategy::Default]);
        t.add(b(1), ident("a", &[]));
        assert!(!t.ready());
        let mut rng = rand::rng();
        assert!(t.pick("anything", &mut rng).is_some());
    }
}
