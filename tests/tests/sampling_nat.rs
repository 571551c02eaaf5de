//! Consistent sampling across two hosts and a NAT (issue 15): the two test hosts of
//! [`otel_agent_tests::nat`] (network namespaces the test creates, a DNAT from a virtual
//! service address to the server's address and another port, masquerade with fully random
//! source ports), one agent per host scoped to its namespace (`--netns`), each at
//! `OTEL_TRACES_SAMPLER=traceidratio` and `OTEL_TRACES_SAMPLER_ARG=0.5`, each exporting to a
//! rotel of its own. Over 100 connections through the service: for every connection both
//! ends exported or neither, in one trace, each span with `ot=th:8`; the kept fraction within
//! binomial bounds; each agent's final `tcp.session.duration` count equal to the sessions it
//! read (100 each).

use std::time::Duration;

use otel_agent_tests::{
    agent,
    nat::{LINK_NETWORK, MASQUERADE_PORTS, NatHosts},
    process::TempDir,
    require_root,
    rotel::{ReceivedSpan, Rotel},
    traffic::{self, Closer},
};

/// The virtual service's port, which the client host's DNAT sends to `SERVER_PORT`.
const VIP_PORT: u16 = 443;
const SERVER_PORT: u16 = 8443;
/// Connections through the service.
const CONNECTIONS: usize = 100;

/// The span of `spans` whose `key` attribute is `port`, if any (at most one).
fn span_with(spans: &[ReceivedSpan], key: &str, port: u16) -> Option<ReceivedSpan> {
    let wanted = format!("Int({port})");
    let found: Vec<_> = spans
        .iter()
        .filter(|span| span.attributes.get(key) == Some(&wanted))
        .collect();
    assert!(found.len() <= 1, "{found:#?}");
    found.first().map(|span| (*span).clone())
}

#[test]
fn through_a_nat_both_ends_of_every_connection_are_kept_or_dropped_together() {
    require_root();
    let hosts = NatHosts::create("sampling-nat");
    let dirs = [
        TempDir::new("sampling-nat-client"),
        TempDir::new("sampling-nat-server"),
    ];
    let start = |netns: u32, dir: &TempDir| {
        let rotel = Rotel::start_with_metrics(dir.path());
        let endpoint = format!("http://{}", rotel.grpc);
        let agent = agent::start_grpc_in_netns(
            netns,
            &endpoint,
            &[
                "--bsp-schedule-delay",
                "200ms",
                // The link is where the agents run: the server span is the client span's
                // child.
                "--link-peers",
                LINK_NETWORK,
            ],
            &[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ],
            dir.path(),
        );
        (rotel, agent)
    };
    let (client_rotel, mut client_agent) = start(hosts.client.inode(), &dirs[0]);
    let (server_rotel, mut server_agent) = start(hosts.server.inode(), &dirs[1]);

    let service = hosts.service(VIP_PORT, SERVER_PORT);
    let listener = hosts.listen(SERVER_PORT);
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut client = hosts.connect(service).expect("connect to the service");
        let (mut server, seen) = listener.accept().expect("accept");
        assert!(MASQUERADE_PORTS.contains(&seen.port()), "{seen}");
        connections.push((client.local_addr().unwrap().port(), seen.port()));
        traffic::send_both_ways(&mut client, &mut server, 100, 200);
        traffic::close_in_order(client, server, Closer::Client);
    }
    drop(listener);

    // Each agent: its sessions all read, reconciled, exported + sampled out = read, and its
    // final histogram count the sessions it read.
    let mut spans = Vec::new();
    for (agent, rotel) in [
        (&mut client_agent, &client_rotel),
        (&mut server_agent, &server_rotel),
    ] {
        agent::stop(agent);
        let stderr = agent.stderr_text();
        agent::assert_nothing_lost(&stderr);
        let session = agent::accounting(&stderr);
        let read = agent::counter(&session, "records_read");
        assert_eq!(read, CONNECTIONS as u64, "{session:?}");
        let exported = agent::counter(&agent::export_accounting(&stderr), "exported");
        assert_eq!(
            exported + agent::counter(&session, "filtered_sampled_out"),
            read
        );
        let received = rotel.wait_for_spans(exported as usize, Duration::from_secs(20), |_| true);
        assert_eq!(received.len() as u64, exported);
        rotel.final_points("tcp.session.duration", read as f64);
        spans.push(received);
    }

    let mut kept = 0;
    for (client_port, masqueraded_port) in connections {
        let client = span_with(&spans[0], "network.local.port", client_port);
        let server = span_with(&spans[1], "network.peer.port", masqueraded_port);
        match (client, server) {
            (Some(client), Some(server)) => {
                kept += 1;
                assert_eq!(client.trace_id, server.trace_id);
                assert_eq!(server.parent_id, client.span_id);
                assert_eq!(
                    (client.trace_state.as_str(), server.trace_state.as_str()),
                    ("ot=th:8", "ot=th:8")
                );
                let randomness = u64::from_str_radix(&client.trace_id[18..], 16).unwrap();
                assert!(randomness >= 1 << 55, "{client:#?}");
            }
            (None, None) => {}
            (client, server) => panic!(
                "one end of {client_port} -> {masqueraded_port} only: {client:#?} {server:#?}"
            ),
        }
    }
    assert_eq!(kept as usize, spans[0].len());
    assert_eq!(kept as usize, spans[1].len());
    // Binomial(100, 0.5): outside [25, 75] with probability 5.6 * 10^-7.
    assert!((25..=75).contains(&kept), "kept {kept} of {CONNECTIONS}");
}
