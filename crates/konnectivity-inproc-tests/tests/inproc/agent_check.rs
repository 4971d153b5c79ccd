//! `konnectivity doctor agent`'s Connect check (`metadata::PROBE`): the server
//! authenticates and answers it like an agent but never adds it to the routing table, so
//! no dial is ever sent to a check; a real agent beside it keeps serving.
use konnectivity_agent::Hello;
use konnectivity_testkit::servers;

use crate::{echoes, one_agent};

#[tokio::test(start_paused = true)]
async fn a_doctor_check_is_answered_but_never_routed_to() -> anyhow::Result<()> {
    let (h, server, _agent) = one_agent(crate::Harness::server_settings()).await?;
    let settings = h.agent_settings("doctor-check", server.agent_addr)?;
    let hello = Hello {
        flow_window: None,
        probe: true,
        ..Hello::new("doctor-check")
    };
    let check = konnectivity_agent::stream::open(
        "127.0.0.1",
        server.agent_addr,
        settings.tls.clone(),
        &hello,
        std::time::Duration::from_secs(30),
        None,
    )
    .await?;
    assert!(
        check.probe_honoured,
        "the server says it did not register the check"
    );
    assert_eq!(check.server_id, "inproc-server");
    assert_eq!(
        server.shared.table().streams(),
        1,
        "only the real agent is routable"
    );
    // Every dial goes to the real agent while the check's stream is open.
    let echo = servers::echo("127.0.0.1:0").await?;
    for _ in 0..5 {
        let mut c = server.grpc_dial(echo).await?;
        echoes(&mut c, b"not to the check").await?;
    }
    check.tx.close();

    // Without the header the same stream is an agent like any other.
    let plain = konnectivity_agent::stream::open(
        "127.0.0.1",
        server.agent_addr,
        settings.tls,
        &Hello {
            probe: false,
            ..hello
        },
        std::time::Duration::from_secs(30),
        None,
    )
    .await?;
    assert!(!plain.probe_honoured);
    server.wait_for_agents(2).await?;
    plain.tx.close();
    Ok(())
}
