//! Measures the transport over loopback: one-way replica-to-replica frames
//! per second, closed-loop client round trips (request on a client link,
//! reply with `send_conn`), and four nodes broadcasting to each other at
//! once (the shape of PBFT's prepare and commit phases).
//!
//! ```text
//! cargo run --release -p voidbox-net --example loopback -- [frames] [frame_bytes] [round_trips]
//! ```
//! Defaults: 500000 frames of 128 bytes, 20000 round trips; the all-to-all
//! part has each of the 4 nodes broadcast frames / 4.

use std::sync::Arc;
use std::time::{Duration, Instant};

use voidbox_net::{connect_client, start_node, Event, Limits, NodeConfig, Peer};

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .map(|a| {
            a.parse()
                .expect("arguments are numbers: frames frame_bytes round_trips")
        })
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let frames = arg(1, 500_000);
    let frame_bytes = arg(2, 128).max(8);
    let round_trips = arg(3, 20_000);

    let addrs: Vec<_> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap())
        .collect();
    let limits = Limits::default();
    let (n0, _e0) = start_node(NodeConfig {
        id: 0,
        listen: addrs[0],
        peers: vec![(1, addrs[1])],
        limits,
    })
    .await
    .expect("node 0 starts");
    let (n1, mut e1) = start_node(NodeConfig {
        id: 1,
        listen: addrs[1],
        peers: vec![(0, addrs[0])],
        limits,
    })
    .await
    .expect("node 1 starts");

    // One way, node 0 to node 1. The producer keeps the link's queue at
    // most half full so that nothing is dropped and the figure is the
    // transport's, not the drop rate's.
    let body: Arc<[u8]> = Arc::from(vec![0x5a; frame_bytes]);
    let started = Instant::now();
    let producer = {
        let n0 = n0.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            while sent < frames {
                if n0.queued(1).unwrap_or(0) >= limits.queue_frames / 2 {
                    tokio::task::yield_now().await;
                    continue;
                }
                n0.send_replica(1, body.clone());
                sent += 1;
            }
        })
    };
    let mut received = 0;
    while received < frames {
        match e1.recv().await.expect("node 1 runs") {
            Event::Frame { .. } => received += 1,
            Event::Closed(_) => {}
        }
    }
    let elapsed = started.elapsed();
    producer.await.unwrap();
    let one_way = frames as f64 / elapsed.as_secs_f64();
    println!(
        "{{\"one_way\": {{\"frames\": {frames}, \"frame_bytes\": {frame_bytes}, \"seconds\": {:.3}, \
         \"frames_per_s\": {:.0}, \"mib_per_s\": {:.1}, \"dropped\": {}}}}}",
        elapsed.as_secs_f64(),
        one_way,
        one_way * frame_bytes as f64 / (1024.0 * 1024.0),
        n0.stats().dropped_queue_full
    );

    // Closed loop: one request outstanding at a time, node 1 echoes it.
    let (client, mut replies) = connect_client(vec![(1, addrs[1])], limits).await;
    let mut latencies = Vec::with_capacity(round_trips);
    let request: Arc<[u8]> = Arc::from(vec![0x17; frame_bytes]);
    let started = Instant::now();
    for _ in 0..round_trips {
        let t = Instant::now();
        client.send(1, request.clone());
        loop {
            match e1.recv().await.expect("node 1 runs") {
                Event::Frame {
                    from: Peer::Conn(conn),
                    bytes,
                } => {
                    n1.send_conn(conn, Arc::from(bytes));
                    break;
                }
                Event::Frame { .. } | Event::Closed(_) => {}
            }
        }
        replies.recv().await.expect("client runs");
        latencies.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| -> Duration {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)]
    };
    println!(
        "{{\"round_trip\": {{\"count\": {round_trips}, \"per_s\": {:.0}, \"p50_us\": {}, \
         \"p99_us\": {}, \"max_us\": {}}}}}",
        round_trips as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_micros(),
        pct(0.99).as_micros(),
        latencies.last().map_or(0, |d| d.as_micros())
    );
    client.shutdown();
    n0.shutdown();
    n1.shutdown();

    all_to_all(4, frames / 4, frame_bytes).await;
}

/// Every node broadcasts `per_node` frames while receiving everyone else's.
async fn all_to_all(n: usize, per_node: usize, frame_bytes: usize) {
    let addrs: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap())
        .collect();
    let limits = Limits::default();
    let mut nodes = Vec::new();
    for id in 0..n {
        let peers = (0..n)
            .filter(|&p| p != id)
            .map(|p| (p as u32, addrs[p]))
            .collect();
        let config = NodeConfig {
            id: id as u32,
            listen: addrs[id],
            peers,
            limits,
        };
        nodes.push(start_node(config).await.expect("node starts"));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (node, mut events) in nodes {
        let body: Arc<[u8]> = Arc::from(vec![0x33; frame_bytes]);
        tasks.push(tokio::spawn(async move {
            let peers: Vec<u32> = (0..n as u32).filter(|&p| p != node.id()).collect();
            let want = per_node * (n - 1);
            let (mut sent, mut received) = (0, 0);
            while received < want {
                // Send while the queues have room, then take what arrived.
                while sent < per_node
                    && peers
                        .iter()
                        .all(|&p| node.queued(p).unwrap_or(0) < limits.queue_frames / 2)
                {
                    node.broadcast(body.clone());
                    sent += 1;
                    if sent % 64 == 0 {
                        break;
                    }
                }
                match events.try_recv() {
                    Ok(Event::Frame { .. }) => received += 1,
                    Ok(Event::Closed(_)) => {}
                    Err(_) if sent < per_node => tokio::task::yield_now().await,
                    Err(_) => {
                        if let Some(Event::Frame { .. }) = events.recv().await {
                            received += 1;
                        }
                    }
                }
            }
            let dropped = node.stats().dropped_queue_full;
            node.shutdown();
            dropped
        }));
    }
    let mut dropped = 0;
    for task in tasks {
        dropped += task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let delivered = n * per_node * (n - 1);
    println!(
        "{{\"all_to_all\": {{\"nodes\": {n}, \"broadcasts_per_node\": {per_node}, \
         \"frame_bytes\": {frame_bytes}, \"seconds\": {:.3}, \"delivered_frames_per_s\": {:.0}, \
         \"dropped\": {dropped}}}}}",
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64()
    );
}
