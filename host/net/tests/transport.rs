//! The transport over real TCP on loopback: nodes, clients, bad input,
//! restarts and full queues.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::Receiver;
use voidbox_net::{
    connect_client, start_node, write_frame, ConnId, Event, Hello, Limits, NetError, NodeConfig,
    NodeHandle, Peer,
};

/// Long enough for anything on loopback; only reached when a test fails.
const WAIT: Duration = Duration::from_secs(10);

fn frame(text: &str) -> Arc<[u8]> {
    Arc::from(text.as_bytes())
}

/// Addresses that nothing listens on (yet): bound once to get a free port.
fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

fn config(id: u32, addrs: &[SocketAddr], limits: Limits) -> NodeConfig {
    NodeConfig {
        id,
        listen: addrs[id as usize],
        peers: addrs
            .iter()
            .enumerate()
            .filter(|&(i, _)| i as u32 != id)
            .map(|(i, &a)| (i as u32, a))
            .collect(),
        limits,
    }
}

async fn cluster(n: usize) -> (Vec<SocketAddr>, Vec<(NodeHandle, Receiver<Event>)>) {
    let addrs = free_addrs(n);
    let mut nodes = Vec::new();
    for id in 0..n as u32 {
        nodes.push(
            start_node(config(id, &addrs, Limits::default()))
                .await
                .expect("node starts"),
        );
    }
    (addrs, nodes)
}

async fn next_event(events: &mut Receiver<Event>) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event arrives in time")
        .expect("the node is running")
}

async fn next_frame(events: &mut Receiver<Event>) -> (Peer, Vec<u8>) {
    loop {
        if let Event::Frame { from, bytes } = next_event(events).await {
            return (from, bytes);
        }
    }
}

/// Waits until the stream is closed by the far side (EOF or reset).
async fn closed_by_peer(stream: &mut TcpStream) {
    let mut buf = [0u8; 16];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the node closes the connection in time")
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn raw_conn(addr: SocketAddr, hello: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the node");
    write_frame(&mut stream, hello)
        .await
        .expect("send the hello");
    stream
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn three_nodes_exchange_frames_both_ways() {
    let (_, mut nodes) = cluster(3).await;
    for i in 0..3u32 {
        for j in 0..3u32 {
            if i != j {
                nodes[i as usize]
                    .0
                    .send_replica(j, frame(&format!("{i}->{j}")));
            }
        }
    }
    for (j, (_, events)) in nodes.iter_mut().enumerate() {
        let mut got = vec![next_frame(events).await, next_frame(events).await];
        got.sort();
        let want: Vec<_> = (0..3u32)
            .filter(|&i| i != j as u32)
            .map(|i| (Peer::Replica(i), format!("{i}->{j}").into_bytes()))
            .collect();
        assert_eq!(got, want, "node {j}");
    }
    for (node, _) in &nodes {
        let stats = node.stats();
        assert_eq!(stats.frames_in, 2);
        assert_eq!(stats.connects, 2, "one link per peer");
        assert_eq!(stats.bad_hello, 0);
        node.shutdown();
    }
}

#[tokio::test]
async fn broadcast_reaches_every_peer_and_not_the_sender() {
    let (_, mut nodes) = cluster(4).await;
    nodes[2].0.broadcast(frame("to all"));
    for (id, (_, events)) in nodes.iter_mut().enumerate() {
        if id != 2 {
            assert_eq!(
                next_frame(events).await,
                (Peer::Replica(2), b"to all".to_vec())
            );
        }
    }
    eventually("three frames out", || nodes[2].0.stats().frames_out == 3).await;
    // Order is kept per link: a second frame from 1 to 2 arrives after one
    // sent before it, and node 2 never got its own broadcast.
    nodes[1].0.send_replica(2, frame("first"));
    nodes[1].0.send_replica(2, frame("second"));
    let events = &mut nodes[2].1;
    assert_eq!(next_frame(events).await.1, b"first");
    assert_eq!(next_frame(events).await.1, b"second");
    assert_eq!(nodes[2].0.stats().frames_in, 2);
}

#[tokio::test]
async fn client_gets_replies_on_its_own_connection() {
    let (addrs, mut nodes) = cluster(3).await;
    let replicas: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, &a)| (i as u32, a))
        .collect();
    let (client, mut replies) = connect_client(replicas, Limits::default()).await;
    client.broadcast(frame("request"));
    let mut conns = Vec::new();
    for (id, (node, events)) in nodes.iter_mut().enumerate() {
        let (from, bytes) = next_frame(events).await;
        assert_eq!(bytes, b"request");
        let Peer::Conn(conn) = from else {
            panic!("node {id}: a client frame came as {from:?}");
        };
        assert!(node.send_conn(conn, frame(&format!("reply from {id}"))));
        conns.push(conn);
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            tokio::time::timeout(WAIT, replies.recv())
                .await
                .expect("reply in time")
                .expect("client running"),
        );
    }
    got.sort();
    let want: Vec<_> = (0..3u32)
        .map(|i| (i, format!("reply from {i}").into_bytes()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(client.stats().frames_in, 3);
    assert_eq!(client.stats().frames_out, 3);

    // When the client goes away each node is told, and the connection is gone.
    client.shutdown();
    client.closed().await;
    for ((node, events), conn) in nodes.iter_mut().zip(conns) {
        assert_eq!(next_event(events).await, Event::Closed(conn));
        assert!(!node.send_conn(conn, frame("too late")));
        assert!(node.conns().is_empty());
    }
}

#[tokio::test]
async fn send_conn_to_an_unknown_connection_is_false() {
    let (_, nodes) = cluster(1).await;
    assert!(!nodes[0].0.send_conn(ConnId(12345), frame("nobody")));
}

#[tokio::test]
async fn oversized_length_prefix_closes_only_that_connection() {
    let (addrs, mut nodes) = cluster(2).await;
    let (client, mut replies) = connect_client(vec![(0, addrs[0])], Limits::default()).await;

    // A client connection announcing 4 GiB - 1 bytes.
    let mut bad_client = raw_conn(addrs[0], &Hello::Client.encode()).await;
    bad_client.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    closed_by_peer(&mut bad_client).await;
    // A replica link announcing one byte over the limit.
    let mut bad_replica = raw_conn(addrs[0], &Hello::Replica(1).encode()).await;
    let over = (Limits::default().frame_bytes_max + 1) as u32;
    bad_replica.write_all(&over.to_be_bytes()).await.unwrap();
    closed_by_peer(&mut bad_replica).await;
    assert_eq!(nodes[0].0.stats().oversized, 2);

    // The node still serves its client and its peer.
    client.send(0, frame("still there?"));
    let (node, events) = &mut nodes[0];
    let (from, bytes) = next_frame(events).await;
    assert_eq!(bytes, b"still there?");
    let Peer::Conn(conn) = from else {
        panic!("client frame came as {from:?}")
    };
    assert!(node.send_conn(conn, frame("yes")));
    let reply = tokio::time::timeout(WAIT, replies.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, (0, b"yes".to_vec()));
    nodes[1].0.send_replica(0, frame("peer frame"));
    assert_eq!(
        next_frame(&mut nodes[0].1).await,
        (Peer::Replica(1), b"peer frame".to_vec())
    );
}

#[tokio::test]
async fn outgoing_frames_over_the_limit_are_dropped_and_counted() {
    let limits = Limits {
        frame_bytes_max: 8,
        ..Limits::default()
    };
    let addrs = free_addrs(2);
    let (n0, _e0) = start_node(config(0, &addrs, limits)).await.unwrap();
    let (_n1, mut e1) = start_node(config(1, &addrs, limits)).await.unwrap();
    n0.send_replica(1, frame("123456789"));
    n0.send_replica(1, frame("12345678"));
    assert_eq!(next_frame(&mut e1).await.1, b"12345678");
    assert_eq!(n0.stats().oversized, 1);
}

#[tokio::test]
async fn bad_hellos_are_refused() {
    let (addrs, mut nodes) = cluster(2).await;
    let addr = addrs[0];

    let mut garbage = raw_conn(addr, b"definitely not a hello").await;
    closed_by_peer(&mut garbage).await;

    // A replica id that is not a configured peer (nor this node itself).
    for id in [99, 0] {
        let mut stranger = raw_conn(addr, &Hello::Replica(id).encode()).await;
        // Frames after a refused hello must not be delivered.
        let _ = write_frame(&mut stranger, b"forged").await;
        closed_by_peer(&mut stranger).await;
    }

    // Another protocol altogether: its first bytes read as a huge length.
    let mut http = TcpStream::connect(addr).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    closed_by_peer(&mut http).await;

    // A newer version of this protocol.
    let mut newer = raw_conn(addr, b"voidbox-net/2C").await;
    closed_by_peer(&mut newer).await;

    let stats = nodes[0].0.stats();
    assert_eq!(stats.bad_hello, 5, "{stats:?}");
    assert_eq!(stats.frames_in, 0);
    // The refused connections delivered nothing; a real peer still gets in.
    nodes[1].0.send_replica(0, frame("legit"));
    assert_eq!(
        next_frame(&mut nodes[0].1).await,
        (Peer::Replica(1), b"legit".to_vec())
    );
}

#[tokio::test]
async fn restarted_node_is_reconnected_and_frames_flow_again() {
    let addrs = free_addrs(2);
    let (n0, mut e0) = start_node(config(0, &addrs, Limits::default()))
        .await
        .unwrap();
    let (n1, mut e1) = start_node(config(1, &addrs, Limits::default()))
        .await
        .unwrap();
    n0.send_replica(1, frame("before"));
    assert_eq!(next_frame(&mut e1).await.1, b"before");

    n1.shutdown();
    n1.closed().await;
    // The event channel ends with the node's tasks.
    let after = tokio::time::timeout(WAIT, e1.recv()).await.unwrap();
    assert!(after.is_none(), "event after shutdown: {after:?}");
    let (n1, mut e1) = start_node(config(1, &addrs, Limits::default()))
        .await
        .expect("a restarted node binds the same port");

    // A frame written just as the old connection died may be lost (PBFT
    // retransmits), so keep sending until one arrives.
    let got = tokio::time::timeout(WAIT, async {
        loop {
            n0.send_replica(1, frame("after"));
            if let Ok(Some(Event::Frame { from, bytes })) =
                tokio::time::timeout(Duration::from_millis(50), e1.recv()).await
            {
                return (from, bytes);
            }
        }
    })
    .await
    .expect("node 0 reconnects to the restarted node");
    assert_eq!(got, (Peer::Replica(0), b"after".to_vec()));
    assert!(n0.stats().reconnects >= 1, "{:?}", n0.stats());

    n1.send_replica(0, frame("back"));
    assert_eq!(
        next_frame(&mut e0).await,
        (Peer::Replica(1), b"back".to_vec())
    );
}

#[tokio::test]
async fn full_queue_drops_and_counts_then_delivers_what_it_kept() {
    let limits = Limits {
        queue_frames: 4,
        ..Limits::default()
    };
    // Peer 1 is not up yet, so the link cannot drain its queue.
    let addrs = free_addrs(2);
    let (n0, _e0) = start_node(config(0, &addrs, limits)).await.unwrap();
    for i in 0..10 {
        n0.send_replica(1, frame(&format!("frame {i}")));
    }
    assert_eq!(n0.stats().dropped_queue_full, 6);
    assert_eq!(n0.queued(1), Some(4));

    let (_n1, mut e1) = start_node(config(1, &addrs, limits)).await.unwrap();
    for i in 0..4 {
        assert_eq!(
            next_frame(&mut e1).await.1,
            format!("frame {i}").into_bytes()
        );
    }
    eventually("the queue drains", || n0.queued(1) == Some(0)).await;
}

#[tokio::test]
async fn a_full_event_channel_pushes_back_instead_of_dropping() {
    let limits = Limits {
        events: 1,
        ..Limits::default()
    };
    let addrs = free_addrs(2);
    let (_n0, mut e0) = start_node(config(0, &addrs, limits)).await.unwrap();
    let (n1, _e1) = start_node(config(1, &addrs, Limits::default()))
        .await
        .unwrap();
    for i in 0..1000u32 {
        n1.send_replica(0, Arc::from(i.to_be_bytes().to_vec()));
    }
    // Nobody reads for a while: the reader waits on the channel.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..1000u32 {
        assert_eq!(next_frame(&mut e0).await.1, i.to_be_bytes());
    }
    assert_eq!(n1.stats().dropped_queue_full, 0);
}

#[tokio::test]
async fn unknown_replicas_are_counted() {
    let (addrs, nodes) = cluster(2).await;
    nodes[0].0.send_replica(7, frame("x"));
    nodes[0].0.send_replica(0, frame("to myself"));
    assert_eq!(nodes[0].0.stats().unknown_peer, 2);
    let (client, _replies) = connect_client(vec![(0, addrs[0])], Limits::default()).await;
    client.send(3, frame("x"));
    assert_eq!(client.stats().unknown_peer, 1);
}

#[tokio::test]
async fn bad_configurations_are_refused() {
    let addrs = free_addrs(2);
    let mut duplicate = config(0, &addrs, Limits::default());
    duplicate.peers.push((1, addrs[1]));
    assert!(matches!(
        start_node(duplicate).await,
        Err(NetError::DuplicatePeer { id: 1 })
    ));
    let mut itself = config(0, &addrs, Limits::default());
    itself.peers.push((0, addrs[0]));
    assert!(matches!(
        start_node(itself).await,
        Err(NetError::SelfInPeers { id: 0 })
    ));
    let zero_queue = Limits {
        queue_frames: 0,
        ..Limits::default()
    };
    assert!(matches!(
        start_node(config(0, &addrs, zero_queue)).await,
        Err(NetError::BadLimits { .. })
    ));
    let (_running, _events) = start_node(config(0, &addrs, Limits::default()))
        .await
        .unwrap();
    let err = start_node(config(0, &addrs, Limits::default()))
        .await
        .expect_err("a second node cannot listen on a port in use");
    assert!(matches!(err, NetError::Bind { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_frames_arrive_complete_and_in_order_under_load() {
    let addrs = free_addrs(2);
    let limits = Limits {
        queue_frames: 1 << 16,
        ..Limits::default()
    };
    let (n0, _e0) = start_node(config(0, &addrs, limits)).await.unwrap();
    let (_n1, mut e1) = start_node(config(1, &addrs, limits)).await.unwrap();
    let total = 50_000u32;
    for i in 0..total {
        // Sizes vary so frames straddle read and write buffer boundaries.
        let mut body = i.to_be_bytes().to_vec();
        body.resize(4 + (i as usize * 7919) % 300, 0xab);
        n0.send_replica(1, Arc::from(body));
    }
    for i in 0..total {
        let (_, bytes) = next_frame(&mut e1).await;
        assert_eq!(bytes[..4], i.to_be_bytes());
        assert_eq!(bytes.len(), 4 + (i as usize * 7919) % 300);
    }
    assert_eq!(n0.stats().dropped_queue_full, 0);
}

#[tokio::test]
async fn links_report_when_they_are_up() {
    let addrs = free_addrs(2);
    let (n0, _e0) = start_node(config(0, &addrs, Limits::default()))
        .await
        .unwrap();
    assert_eq!(n0.peer_connected(1), Some(false), "peer 1 is not up yet");
    assert_eq!(n0.peer_connected(5), None);
    let (n1, _e1) = start_node(config(1, &addrs, Limits::default()))
        .await
        .unwrap();
    eventually("both links up", || {
        n0.peer_connected(1) == Some(true) && n1.peer_connected(0) == Some(true)
    })
    .await;
    // The peer's link is up once its hello is sent, which may be before
    // node 0 has accepted the connection.
    eventually("one link out and one peer link in", || {
        n0.stats().conns_open == 2
    })
    .await;
    n1.shutdown();
    n1.closed().await;
    eventually("node 0 sees the link go down", || {
        n0.peer_connected(1) == Some(false)
    })
    .await;
    eventually("node 0's connections closed", || n0.stats().conns_open == 0).await;
}

#[tokio::test]
async fn client_reconnects_to_a_restarted_replica() {
    let addrs = free_addrs(1);
    let (n0, _e0) = start_node(config(0, &addrs, Limits::default()))
        .await
        .unwrap();
    let (client, mut replies) = connect_client(vec![(0, addrs[0])], Limits::default()).await;
    eventually("client link up", || client.connected(0) == Some(true)).await;
    n0.shutdown();
    n0.closed().await;
    eventually("client link down", || client.connected(0) == Some(false)).await;

    let (n0, mut e0) = start_node(config(0, &addrs, Limits::default()))
        .await
        .unwrap();
    eventually("client link up again", || client.connected(0) == Some(true)).await;
    client.send(0, frame("hello again"));
    let (from, bytes) = next_frame(&mut e0).await;
    assert_eq!(bytes, b"hello again");
    let Peer::Conn(conn) = from else {
        panic!("client frame came as {from:?}")
    };
    assert!(n0.send_conn(conn, frame("welcome back")));
    let reply = tokio::time::timeout(WAIT, replies.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, (0, b"welcome back".to_vec()));
    let stats = client.stats();
    assert_eq!((stats.connects, stats.reconnects), (2, 1), "{stats:?}");
}

#[tokio::test]
async fn client_closes_a_replica_connection_that_sends_an_oversized_frame() {
    // A fake replica: reads the client's hello, then announces a huge frame.
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = fake.local_addr().unwrap();
    let limits = Limits {
        frame_bytes_max: 1024,
        ..Limits::default()
    };
    let (client, mut replies) = connect_client(vec![(4, addr)], limits).await;

    let (mut conn, _) = fake.accept().await.unwrap();
    let hello = voidbox_net::read_frame(&mut conn, 64)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hello, Hello::Client.encode());
    write_frame(&mut conn, &[1u8; 1025]).await.unwrap();
    closed_by_peer(&mut conn).await;
    assert_eq!(client.stats().oversized, 1);

    // The client dials again and takes frames within the limit.
    let (mut conn, _) = tokio::time::timeout(WAIT, fake.accept())
        .await
        .unwrap()
        .unwrap();
    let hello = voidbox_net::read_frame(&mut conn, 64)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Hello::decode(&hello), Ok(Hello::Client));
    write_frame(&mut conn, &[2u8; 1024]).await.unwrap();
    let reply = tokio::time::timeout(WAIT, replies.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, (4, vec![2u8; 1024]));
    assert_eq!(client.stats().reconnects, 1);
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_node_and_frees_its_port() {
    let addrs = free_addrs(2);
    let (n0, mut e0) = start_node(config(0, &addrs, Limits::default()))
        .await
        .unwrap();
    let clone = n0.clone();
    drop(n0);
    clone.send_replica(1, frame("a clone still works"));
    drop(clone);
    // The event channel ends once every task of the node has ended.
    let after = tokio::time::timeout(WAIT, e0.recv()).await.unwrap();
    assert!(
        after.is_none(),
        "event after the handles were dropped: {after:?}"
    );
    let (_again, _e) = start_node(config(0, &addrs, Limits::default()))
        .await
        .expect("the port is free again");
}
