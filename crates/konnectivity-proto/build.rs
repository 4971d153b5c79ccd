//! Compiles `proto/` (the workspace root's) with the pure-Rust `protox` compiler, so a
//! build needs no system `protoc`.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("konnectivity-client/proto/client/client.proto"),
        root.join("agent/agent.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        // `Data.data` becomes `bytes::Bytes`: DATA payloads are relayed without copying.
        .bytes(".")
        // The generated `connect(endpoint)` constructor would collide with the
        // `AgentService.Connect` RPC method; clients are built from a channel instead.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
