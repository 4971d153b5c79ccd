//! Support for tests, benchmarks and `konnectivity demo`: a throwaway PKI, small
//! destination servers and child processes. Nothing here is used by the proxy itself.
//!
//! - [`argv`]: proxy-server and proxy-agent command lines (certificates, ports, frontend);
//! - [`exposition`]: golden files of a `/metrics` page's names, HELP, TYPE and label sets;
//! - [`go_interop`]: building and running the Go interop client (`tests/go-interop`);
//! - [`kube`]: a stand-in kube-apiserver on loopback and a kubeconfig pointing at it;
//! - [`netns`]: network namespaces, veth links, a bridged control plane with nodes;
//! - [`pki`]: a CA and server/agent/frontend certificates written as PEM files;
//! - [`servers`]: HTTP "hello", TCP echo and byte-source servers on loopback, a closed
//!   port and a port whose TCP handshake never completes;
//! - [`relay`]: a loopback TCP relay a test can freeze, cut or make refuse;
//! - `inproc` (feature `inproc`): a real proxy-server and proxy-agent in the test's
//!   process, for tests on tokio's paused clock;
//! - [`process`]: child processes killed on drop, free ports, HTTP GET, `/proc` readings;
//! - [`netns`]: network namespaces, and a control-plane/node link to partition or make
//!   lossy (root, iproute2, iptables).

pub mod argv;
pub mod exposition;
pub mod go_interop;
#[cfg(feature = "inproc")]
pub mod inproc;
pub mod kube;
pub mod netns;
pub mod pki;
pub mod process;
pub mod relay;
pub mod servers;
