//! Command lines for `proxy-server` and `proxy-agent` (ours or upstream's: both take
//! upstream's flags) as the e2e tests and the bench start them.
//!
//! Every caller used to spell the certificate, port and bind-address flags itself; a
//! builder here is the one place that knows which flags make a test server or agent, so a
//! renamed flag or a new required one is changed once.

use std::marker::PhantomData;
use std::path::Path;

use crate::pki::Pki;
use crate::process::free_port;

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The ports a proxy-server listens on.
#[derive(Debug, Clone, Copy)]
pub struct ServerPorts {
    /// Agent port.
    pub agent: u16,
    /// Health port.
    pub health: u16,
    /// Admin port.
    pub admin: u16,
    /// TCP frontend port (0 with UDS).
    pub frontend: u16,
}

impl ServerPorts {
    /// Free ports for every listener; `frontend` only for a TCP frontend (`tcp`).
    pub fn free(tcp: bool) -> Self {
        ServerPorts {
            agent: free_port(),
            health: free_port(),
            admin: free_port(),
            frontend: if tcp { free_port() } else { 0 },
        }
    }
}

/// A proxy-server listener other than the frontend.
#[derive(Debug, Clone, Copy)]
pub enum Listener {
    /// `--agent-port`, `--agent-bind-address`.
    Agent,
    /// `--health-port`, `--health-bind-address`.
    Health,
    /// `--admin-port`, `--admin-bind-address`.
    Admin,
}

/// A command line of the binary `B` ([`Server`] or [`Agent`]), built flag by flag.
#[derive(Debug, Clone)]
pub struct Argv<B> {
    args: Vec<String>,
    binary: PhantomData<B>,
}

/// proxy-server, for [`Argv`].
#[derive(Debug, Clone)]
pub enum Server {}

/// proxy-agent, for [`Argv`].
#[derive(Debug, Clone)]
pub enum Agent {}

/// A proxy-server command line: the cluster (agent-facing) certificates from a [`Pki`],
/// the server ID, then listeners, frontend and extra flags as the caller adds them.
pub type ServerArgv = Argv<Server>;

/// A proxy-agent command line: the agent's certificates from a [`Pki`], the server to
/// dial and the agent ID, then ports and extra flags as the caller adds them.
pub type AgentArgv = Argv<Agent>;

impl<B> Argv<B> {
    fn with(args: Vec<String>) -> Self {
        Argv {
            args,
            binary: PhantomData,
        }
    }

    /// More flags, as given.
    pub fn args<I, S>(mut self, extra: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(extra.into_iter().map(Into::into));
        self
    }

    /// The command line.
    pub fn build(self) -> Vec<String> {
        self.args
    }
}

impl Argv<Server> {
    /// `--mode=<mode>`, the agent-facing certificates of `pki` (`--cluster-*`) and
    /// `--server-id=<id>`.
    pub fn new(id: &str, mode: &str, pki: &Pki) -> Self {
        Self::with(vec![
            format!("--mode={mode}"),
            format!("--cluster-cert={}", path(&pki.server_cert)),
            format!("--cluster-key={}", path(&pki.server_key)),
            format!("--cluster-ca-cert={}", path(&pki.ca)),
            format!("--server-id={id}"),
        ])
    }

    /// The agent, health and admin listeners, all on `bind`.
    pub fn listeners(self, bind: &str, agent: u16, health: u16, admin: u16) -> Self {
        self.listen(Listener::Agent, bind, agent)
            .listen(Listener::Health, bind, health)
            .listen(Listener::Admin, bind, admin)
    }

    /// One listener on `bind:port`; an empty `bind` leaves its bind-address flag out
    /// (upstream's default).
    pub fn listen(mut self, listener: Listener, bind: &str, port: u16) -> Self {
        let name = match listener {
            Listener::Agent => "agent",
            Listener::Health => "health",
            Listener::Admin => "admin",
        };
        self.args.push(format!("--{name}-port={port}"));
        if !bind.is_empty() {
            self.args.push(format!("--{name}-bind-address={bind}"));
        }
        self
    }

    /// The frontend on a UNIX socket (`--uds-name`, `--server-port=0`).
    pub fn uds_frontend(mut self, socket: &Path) -> Self {
        self.args.push(format!("--uds-name={}", path(socket)));
        self.args.push("--server-port=0".into());
        self
    }

    /// The frontend on TCP with mTLS (the frontend certificates of `pki`).
    pub fn tcp_frontend(mut self, bind: &str, port: u16, pki: &Pki) -> Self {
        self.args.extend([
            format!("--server-port={port}"),
            format!("--server-bind-address={bind}"),
            format!("--server-cert={}", path(&pki.server_cert)),
            format!("--server-key={}", path(&pki.server_key)),
            format!("--server-ca-cert={}", path(&pki.ca)),
        ]);
        self
    }
}

impl Argv<Agent> {
    /// `--ca-cert`, `--agent-cert`, `--agent-key` of `pki`, `--proxy-server-host=<host>`
    /// (a comma list for several servers), `--proxy-server-port=<port>`, `--agent-id=<id>`.
    pub fn new(id: &str, pki: &Pki, host: &str, port: u16) -> Self {
        Self::with(vec![
            format!("--ca-cert={}", path(&pki.ca)),
            format!("--agent-cert={}", path(&pki.agent_cert)),
            format!("--agent-key={}", path(&pki.agent_key)),
            format!("--proxy-server-host={host}"),
            format!("--proxy-server-port={port}"),
            format!("--agent-id={id}"),
        ])
    }

    /// `--health-server-port=<health>` and a free `--admin-server-port`.
    pub fn ports(mut self, health: u16) -> Self {
        self.args.push(format!("--health-server-port={health}"));
        self.args
            .push(format!("--admin-server-port={}", free_port()));
        self
    }

    /// `--sync-interval` and `--sync-interval-cap` (Go durations).
    pub fn sync(mut self, interval: &str, cap: &str) -> Self {
        self.args.push(format!("--sync-interval={interval}"));
        self.args.push(format!("--sync-interval-cap={cap}"));
        self
    }
}
