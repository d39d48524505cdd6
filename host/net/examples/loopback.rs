//! Measures the transport over loopback: one-way replica-to-replica frames
//! per second, and closed-loop client round trips (request on a client
//! link, reply with `send_conn`).
//!
//! ```text
//! cargo run --release -p voidbox-net --example loopback -- [frames] [frame_bytes] [round_trips]
//! ```
//! Defaults: 500000 frames of 128 bytes, 20000 round trips.

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
}
