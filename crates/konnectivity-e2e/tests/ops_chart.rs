//! `charts/konnectivity` through the real helm (built from the Go module registry by
//! `tests/tools/build.sh`): `helm lint --strict` and `helm template` for the defaults and
//! every preset; then, per preset, the rendered `proxy-server` and `proxy-agent`
//! arguments are run by our binaries, with only file paths, ports and hosts substituted
//! (as the kubelet would expand `$(NODE_NAME)`), until they answer /healthz (and, where
//! the agent can authenticate without kube-apiserver, until the server is ready).
//!
//! The server-side dry run against a real kube-apiserver is in tests/k8s/run.sh.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use konnectivity_e2e::ops::{container_args, go_tool, helm_template, object, repo_root};
use konnectivity_e2e::*;
use konnectivity_testkit::pki::{self, Pki};

const PRESETS: [&str; 3] = ["kubeadm", "k0s", "aks"];

fn assert_arg(args: &[String], arg: &str) {
    assert!(args.iter().any(|a| a == arg), "no {arg} in {args:?}");
}

fn helm() -> anyhow::Result<Option<PathBuf>> {
    go_tool("helm")
}

#[test]
fn chart_lints_and_renders_for_every_preset() -> anyhow::Result<()> {
    let Some(helm) = helm()? else { return Ok(()) };
    let chart = repo_root().join("charts/konnectivity");
    for preset in [None].into_iter().chain(PRESETS.map(Some)) {
        let mut cmd = Command::new(&helm);
        cmd.args(["lint", "--strict", "--namespace", "kube-system"])
            .arg(&chart);
        if let Some(p) = preset {
            cmd.arg("-f").arg(chart.join(format!("presets/{p}.yaml")));
        }
        let out = cmd.output()?;
        assert!(
            out.status.success(),
            "helm lint --strict ({preset:?}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // kubeadm: the sidecar fragment (UDS, gRPC), token-authenticated agents on 8132,
    // Leases on both sides, TokenReview rights for the sidecar's user.
    let docs = helm_template(&helm, Some("kubeadm"))?;
    let cm = object(&docs, "ConfigMap", "-server-sidecar").expect("sidecar ConfigMap");
    let egress = cm["data"]["egress-selector-configuration.yaml"]
        .as_str()
        .expect("egress selector configuration");
    assert!(egress.contains("proxyProtocol: GRPC"), "{egress}");
    assert!(object(&docs, "Deployment", "-server").is_none());
    let agent = object(&docs, "DaemonSet", "-agent").expect("agent DaemonSet");
    let pod = &agent["spec"]["template"]["spec"];
    let args = container_args(&pod["containers"]);
    assert_arg(&args, "--proxy-server-port=8132");
    assert_arg(&args, "--count-server-leases");
    assert_eq!(
        pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "system:konnectivity-server"
    );
    let auth = object(&docs, "ClusterRoleBinding", "-auth-delegator").expect("auth-delegator");
    assert_eq!(auth["subjects"][0]["kind"], "User");
    let lease_verbs =
        &object(&docs, "Role", "-server-leases").expect("server Role")["rules"][0]["verbs"];
    for v in ["create", "update", "delete"] {
        assert!(
            lease_verbs
                .as_sequence()
                .is_some_and(|s| s.iter().any(|x| x == v)),
            "server Lease verbs lack {v}: {lease_verbs:?}"
        );
    }
    assert!(object(&docs, "Role", "-agent-leases").is_some());

    // k0s: agents only.
    let docs = helm_template(&helm, Some("k0s"))?;
    assert!(object(&docs, "ConfigMap", "-server-sidecar").is_none());
    assert!(object(&docs, "Deployment", "-server").is_none());
    assert!(object(&docs, "DaemonSet", "-agent").is_some());

    // AKS-style: a server Deployment behind a LoadBalancer on 443, certificate agents.
    let docs = helm_template(&helm, Some("aks"))?;
    let svc = object(&docs, "Service", "-server").expect("server Service");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    let dep = object(&docs, "Deployment", "-server").expect("server Deployment");
    assert_eq!(
        dep["spec"]["template"]["spec"]["serviceAccountName"],
        "konnectivity-server"
    );
    let args = container_args(
        &object(&docs, "DaemonSet", "-agent").expect("agent")["spec"]["template"]["spec"]["containers"],
    );
    assert_arg(&args, "--proxy-server-port=443");
    assert_arg(&args, "--alpn-proto=konnectivity");
    assert!(object(&docs, "ClusterRoleBinding", "-auth-delegator").is_none());
    Ok(())
}

/// Where a rendered argument's value is replaced for a run on loopback.
struct Loopback {
    pki: Pki,
    dir: PathBuf,
    agent_port: u16,
    server_health: u16,
    server_admin: u16,
    frontend: u16,
    agent_health: u16,
    agent_admin: u16,
    kubeconfig: PathBuf,
    token: PathBuf,
}

impl Loopback {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let pki = pki::generate(&dir.join("pki"), &[])?;
        // kube-apiserver is not there: a port nothing listens on.
        let api = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"https://{api}\", certificate-authority: \"{}\"}}\nusers:\n- name: u\n  user: {{token: \"t\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
                pki.ca.display()
            ),
        )?;
        let token = dir.join("token");
        std::fs::write(&token, "not-a-real-token")?;
        // In-cluster credentials, for a server or agent rendered without --kubeconfig.
        let sa = dir.join("serviceaccount");
        std::fs::create_dir_all(&sa)?;
        std::fs::write(sa.join("token"), "not-a-real-token")?;
        std::fs::copy(&pki.ca, sa.join("ca.crt"))?;
        std::fs::write(sa.join("namespace"), "kube-system")?;
        std::fs::write(dir.join("api-port"), api.port().to_string())?;
        Ok(Self {
            pki,
            dir: dir.to_owned(),
            agent_port: free_port(),
            server_health: free_port(),
            server_admin: free_port(),
            frontend: free_port(),
            agent_health: free_port(),
            agent_admin: free_port(),
            kubeconfig,
            token,
        })
    }

    /// The rendered arguments with their paths, ports and hosts replaced; every flag is
    /// kept, in order. Also returns the substitutions made, for the log.
    fn substitute(&self, args: &[String]) -> (Vec<String>, Vec<String>) {
        let p = |x: &Path| x.display().to_string();
        let mut out = Vec::new();
        let mut log = Vec::new();
        for a in args {
            let Some((flag, value)) = a.split_once('=') else {
                out.push(a.clone());
                continue;
            };
            let new = match flag {
                "--uds-name" => p(&self.dir.join("konnectivity-server.socket")),
                "--cluster-cert" | "--server-cert" => p(&self.pki.server_cert),
                "--cluster-key" | "--server-key" => p(&self.pki.server_key),
                "--cluster-ca-cert" | "--server-ca-cert" | "--ca-cert" => p(&self.pki.ca),
                "--agent-cert" => p(&self.pki.agent_cert),
                "--agent-key" => p(&self.pki.agent_key),
                "--kubeconfig" => p(&self.kubeconfig),
                "--service-account-token-path" => p(&self.token),
                "--agent-port" | "--proxy-server-port" => self.agent_port.to_string(),
                "--health-port" => self.server_health.to_string(),
                "--admin-port" => self.server_admin.to_string(),
                "--server-port" if value != "0" => self.frontend.to_string(),
                "--health-server-port" => self.agent_health.to_string(),
                "--admin-server-port" => self.agent_admin.to_string(),
                "--proxy-server-host" | "--agent-bind-address" | "--admin-bind-address" => {
                    "127.0.0.1".to_owned()
                }
                // What the kubelet does with the env the DaemonSet sets.
                "--agent-identifiers" => value
                    .replace("$(NODE_NAME)", "node1")
                    .replace("$(NODE_IP)", "127.0.0.1"),
                _ => value.to_owned(),
            };
            assert!(!new.contains("$("), "unexpanded reference in {a}");
            if new != value {
                log.push(format!("{flag}: {value} -> {new}"));
            }
            out.push(format!("{flag}={new}"));
        }
        (out, log)
    }

    /// Starts `program` with `args`; when they name no kubeconfig but need the API
    /// (in-cluster), in a private mount namespace whose /run holds ServiceAccount
    /// credentials, with KUBERNETES_SERVICE_HOST/PORT pointing at the absent API.
    fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        in_cluster: bool,
    ) -> anyhow::Result<Proc> {
        if !in_cluster {
            return Proc::spawn(name, program, args, None, &self.dir);
        }
        let api_port = std::fs::read_to_string(self.dir.join("api-port"))?;
        let script = format!(
            "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/secrets/kubernetes.io; \
             cp -r '{}' /run/secrets/kubernetes.io/serviceaccount; \
             export KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT={api_port}; exec \"$0\" \"$@\"",
            self.dir.join("serviceaccount").display()
        );
        let mut all = vec![
            "--mount".to_owned(),
            "--propagation".into(),
            "private".into(),
            "sh".into(),
            "-c".into(),
            script,
            program.display().to_string(),
        ];
        all.extend(args.iter().cloned());
        Proc::spawn(name, Path::new("unshare"), &all, None, &self.dir)
    }
}

impl Loopback {
    /// Runs `program` with the `rendered` arguments substituted and waits until it
    /// answers /healthz on `health`; fails with its log otherwise.
    fn run(
        &self,
        preset: &str,
        program: &str,
        rendered: &[String],
        health: u16,
    ) -> anyhow::Result<Proc> {
        let (args, subs) = self.substitute(rendered);
        eprintln!(
            "[{preset}] {program} {}\n  substituted: {subs:?}",
            args.join(" ")
        );
        let proc = self.spawn(program, &bin(program)?, &args, in_cluster(rendered))?;
        let r = wait_for(
            &format!("{program} /healthz"),
            Duration::from_secs(20),
            || healthz(health),
        );
        anyhow::ensure!(
            r.is_ok(),
            "[{preset}] {program} with the chart's args: {r:?}\n{}",
            proc.log_text()
        );
        Ok(proc)
    }
}

fn healthz(port: u16) -> bool {
    http_get(&format!("127.0.0.1:{port}"), "/healthz").is_ok_and(|(s, _)| s == 200)
}

/// Whether these rendered arguments make the binary use the Kubernetes API without a
/// kubeconfig (in-cluster configuration).
fn in_cluster(args: &[String]) -> bool {
    let uses_api = args.iter().any(|a| {
        a == "--enable-lease-controller"
            || a == "--count-server-leases"
            || a.starts_with("--agent-service-account=")
    });
    uses_api && !args.iter().any(|a| a.starts_with("--kubeconfig="))
}

#[test]
fn rendered_server_and_agent_args_run_on_our_binaries() -> anyhow::Result<()> {
    let Some(helm) = helm()? else { return Ok(()) };
    for preset in PRESETS {
        let docs = helm_template(&helm, Some(preset))?;
        let server_args = if let Some(cm) = object(&docs, "ConfigMap", "-server-sidecar") {
            let containers: serde_yaml::Value = serde_yaml::from_str(
                cm["data"]["containers.yaml"]
                    .as_str()
                    .expect("containers.yaml"),
            )?;
            Some(container_args(&containers))
        } else {
            object(&docs, "Deployment", "-server")
                .map(|d| container_args(&d["spec"]["template"]["spec"]["containers"]))
        };
        let agent_args = container_args(
            &object(&docs, "DaemonSet", "-agent").expect("agent DaemonSet")["spec"]["template"]["spec"]
                ["containers"],
        );
        let dir = tempfile::tempdir()?;
        let lo = Loopback::new(dir.path())?;

        let server = match &server_args {
            Some(rendered) => Some(lo.run(preset, "proxy-server", rendered, lo.server_health)?),
            None => None,
        };
        let agent = lo.run(preset, "proxy-agent", &agent_args, lo.agent_health)?;
        // A certificate-authenticated agent needs no kube-apiserver: it connects, and the
        // server becomes ready. (Token agents are reviewed by kube-apiserver: the
        // tests/k8s scenario covers those.)
        if server.is_some() && agent_args.iter().any(|a| a.starts_with("--agent-cert=")) {
            let r = wait_server_ready("127.0.0.1", lo.server_health);
            assert!(
                r.is_ok(),
                "[{preset}] the agent did not connect: {r:?}\n{}\n{}",
                agent.log_text(),
                server.as_ref().map(Proc::log_text).unwrap_or_default()
            );
        }
        for p in server.iter().chain([&agent]) {
            assert!(p.child_alive(), "[{preset}] exited:\n{}", p.log_text());
        }
    }
    Ok(())
}
