//! Network namespaces for topology tests (root, iproute2, iptables): running commands
//! inside one, creating and deleting them, and building the two topologies the e2e tests
//! use — a control plane holding a bridge with nodes attached by veth links
//! ([`Bridge`]), and a control plane and a node joined by one veth pair ([`veth_pair`]) —
//! with nodes firewalled like NAT-ed machines ([`firewall_inbound`]); and [`Link`], a
//! control plane and a node joined by a veth pair that a test (or the bench's fault
//! phase) can partition or make lossy.
//!
//! Failures to set a namespace up panic with the command and its stderr: a topology test
//! fails (it does not skip) where it cannot run.

use std::process::{Command, Stdio};

fn cmd(ns: &str, args: &[&str]) -> Command {
    let mut c = if ns.is_empty() {
        Command::new(args[0])
    } else {
        Command::new("ip")
    };
    if ns.is_empty() {
        c.args(&args[1..]);
    } else {
        c.args(["netns", "exec", ns]).args(args);
    }
    c.stdin(Stdio::null());
    c
}

/// Runs a command in `ns` (the host when empty); its stdout when it succeeded.
pub fn output(ns: &str, args: &[&str]) -> Option<String> {
    let o = cmd(ns, args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Runs a command in `ns` (the host when empty), its output discarded; true on success.
pub fn succeeds(ns: &str, args: &[&str]) -> bool {
    cmd(ns, args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command in `ns`, panicking with its stderr when it fails.
pub fn must(ns: &str, args: &[&str]) {
    match cmd(ns, args).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`{}` failed in netns {ns:?}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run `{}`: {e} (needs root, iproute2 and iptables)",
            args.join(" ")
        ),
    }
}

/// Namespaces created by a test, deleted on drop.
pub struct Namespaces(pub Vec<String>);

impl Namespaces {
    /// Creates the namespaces (deleting stale ones of the same names first), with
    /// `lo` up in each.
    pub fn create(names: &[String]) -> Namespaces {
        for n in names {
            let _ = output("", &["ip", "netns", "del", n]);
            must("", &["ip", "netns", "add", n]);
            must(n, &["ip", "link", "set", "lo", "up"]);
        }
        Namespaces(names.to_vec())
    }

    /// Creates a control-plane namespace `<prefix>-cp-<pid>` and `nodes` node namespaces
    /// `<prefix>-n<N>-<pid>` (N from 1); the guard, the control plane's name and the
    /// nodes' names.
    pub fn control_plane_and_nodes(
        prefix: &str,
        nodes: usize,
    ) -> (Namespaces, String, Vec<String>) {
        let pid = std::process::id();
        let cp = format!("{prefix}-cp-{pid}");
        let nodes: Vec<String> = (1..=nodes)
            .map(|n| format!("{prefix}-n{n}-{pid}"))
            .collect();
        let mut all = vec![cp.clone()];
        all.extend(nodes.iter().cloned());
        (Namespaces::create(&all), cp, nodes)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            // Kill anything left inside, then delete.
            if let Some(pids) = output("", &["ip", "netns", "pids", n]) {
                for p in pids.split_whitespace() {
                    let _ = output("", &["kill", "-9", p]);
                }
            }
            let _ = output("", &["ip", "netns", "del", n]);
        }
    }
}

/// A control plane and a node: two namespaces joined by a veth pair, `cp_ip` and
/// `node_ip` in one /24. Both namespaces (and anything left running in them) are
/// deleted on drop. [`Link::partition`] drops every packet between the two.
pub struct Link {
    /// The control-plane namespace.
    pub cp: String,
    /// The node namespace.
    pub node: String,
    /// The control plane's address.
    pub cp_ip: String,
    /// The node's address.
    pub node_ip: String,
    _namespaces: Namespaces,
}

impl Link {
    /// Creates the pair; `tag` (one or two characters) and `subnet` keep parallel
    /// tests apart (`10.232.<subnet>.0/24`).
    pub fn create(tag: &str, subnet: u8) -> Link {
        let pid = std::process::id();
        let (cp, node) = (format!("klcp-{pid}-{tag}"), format!("klnode-{pid}-{tag}"));
        let namespaces = Namespaces::create(&[cp.clone(), node.clone()]);
        let (cp_ip, node_ip) = (format!("10.232.{subnet}.1"), format!("10.232.{subnet}.2"));
        let (vc, vn) = (format!("kl{pid}{tag}c"), format!("kl{pid}{tag}n"));
        must(
            "",
            &[
                "ip", "link", "add", &vc, "netns", &cp, "type", "veth", "peer", "name", &vn,
                "netns", &node,
            ],
        );
        for (ns, dev, ip) in [(&cp, &vc, &cp_ip), (&node, &vn, &node_ip)] {
            must(ns, &["ip", "addr", "add", &format!("{ip}/24"), "dev", dev]);
            must(ns, &["ip", "link", "set", dev, "up"]);
        }
        Link {
            cp,
            node,
            cp_ip,
            node_ip,
            _namespaces: namespaces,
        }
    }

    fn rules(&self, op: &str) {
        must(
            &self.node,
            &["iptables", op, "INPUT", "-s", &self.cp_ip, "-j", "DROP"],
        );
        must(
            &self.node,
            &["iptables", op, "OUTPUT", "-d", &self.cp_ip, "-j", "DROP"],
        );
    }

    /// Drops every packet between the control plane and the node, both ways
    /// (iptables in the node namespace): no RST, no ICMP, silence.
    pub fn partition(&self) {
        self.rules("-I");
    }

    /// Removes the partition.
    pub fn heal(&self) {
        self.rules("-D");
    }

    fn loss_rules(&self, op: &str, percent: f64) {
        let p = format!("{:.4}", percent / 100.0);
        for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            must(
                &self.node,
                &[
                    "iptables",
                    op,
                    chain,
                    dir,
                    &self.cp_ip,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            );
        }
    }

    /// Drops `percent` % of the packets between the control plane and the node, each
    /// way, at random (iptables `statistic`; this kernel has no netem). Undo with
    /// [`Link::clear_loss`] and the same `percent`.
    pub fn set_loss(&self, percent: f64) {
        self.loss_rules("-I", percent);
    }

    /// Removes the loss [`Link::set_loss`] added.
    pub fn clear_loss(&self, percent: f64) {
        self.loss_rules("-D", percent);
    }

    /// Whether `curl http://<url>` answers 200 from the control plane (1 s cap).
    pub fn cp_get_ok(&self, url: &str) -> bool {
        output(
            &self.cp,
            &["curl", "-sf", "-o", "/dev/null", "-m", "1", url],
        )
        .is_some()
    }
}

/// `curl -s` inside `ns`; the body when the request succeeded.
pub fn curl(ns: &str, url: &str) -> Option<String> {
    output(ns, &["curl", "-s", "-f", "-m", "3", url])
}

/// The value of a metric line (`name{labels} value`) in a Prometheus text page.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Makes `ns` behave like a firewalled (NAT-ed) node: it may open connections, nothing
/// from outside may open one toward it (only established/related traffic and `lo` in).
pub fn firewall_inbound(ns: &str) {
    let ipt = |rule: &[&str]| {
        let mut a = vec!["iptables", "-w", "5", "-A", "INPUT"];
        a.extend(rule);
        must(ns, &a);
    };
    ipt(&[
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    ]);
    ipt(&["-i", "lo", "-j", "ACCEPT"]);
    ipt(&["-j", "DROP"]);
}

/// A bridge `br0` in a control-plane namespace; nodes attach to it with a veth link each.
pub struct Bridge {
    cp: String,
}

impl Bridge {
    /// Creates `br0` in `cp`, up, holding `addrs` (each a /24).
    pub fn create(cp: &str, addrs: &[String]) -> Bridge {
        must(cp, &["ip", "link", "add", "br0", "type", "bridge"]);
        must(cp, &["ip", "link", "set", "br0", "up"]);
        for a in addrs {
            must(cp, &["ip", "addr", "add", &format!("{a}/24"), "dev", "br0"]);
        }
        Bridge { cp: cp.to_owned() }
    }

    /// Attaches `node` (a namespace) as node `n`: `vh<n>` on the bridge, `eth0` in the node
    /// with `ip`/24, both up.
    pub fn attach(&self, n: usize, node: &str, ip: &str) {
        let host_end = format!("vh{n}");
        must(
            &self.cp,
            &[
                "ip", "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns",
                node,
            ],
        );
        must(
            &self.cp,
            &["ip", "link", "set", &host_end, "master", "br0", "up"],
        );
        must(
            node,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        must(node, &["ip", "link", "set", "eth0", "up"]);
    }
}

/// Joins `a` and `b` with a veth pair (`<tag>c` in `a` with `a_ip`/24, `<tag>n` in `b`
/// with `b_ip`/24), both ends and `lo` up.
pub fn veth_pair(tag: &str, a: &str, a_ip: &str, b: &str, b_ip: &str) {
    let (va, vb) = (format!("{tag}c"), format!("{tag}n"));
    must(
        "",
        &[
            "ip", "link", "add", &va, "netns", a, "type", "veth", "peer", "name", &vb, "netns", b,
        ],
    );
    for (ns, dev, ip) in [(a, &va, a_ip), (b, &vb, b_ip)] {
        must(ns, &["ip", "addr", "add", &format!("{ip}/24"), "dev", dev]);
        must(ns, &["ip", "link", "set", dev, "up"]);
        must(ns, &["ip", "link", "set", "lo", "up"]);
    }
}
