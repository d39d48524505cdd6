//! Unit tests of each message handler and each refusal, plus small
//! in-memory clusters for the normal case, checkpoints, view change, state
//! transfer and recovery.

use std::collections::{BTreeSet, VecDeque};

use super::*;
use crate::client::{Client, Completed};
use crate::config::ClusterConfig;
use crate::message::{encode, key_from_seed, Sig};

const N: u32 = 4;
const T0: u64 = 1_000_000;

fn params() -> Params {
    Params {
        checkpoint_interval: 2,
        watermark_window: 4,
        batch_requests_max: 8,
        batch_bytes_max: 1 << 16,
        batch_delay_us: 0,
        batches_in_flight_max: 2,
        view_change_timeout_us: 100_000,
        view_change_timeout_max_us: 1_000_000,
        status_interval_us: 50_000,
        clock_ahead_max_us: 100_000,
        message_bytes_max: 1 << 20,
        operation_bytes_max: 1024,
        pending_requests_max: 3,
        partial_execution_min: 0,
        adopt_timeout_us: 20_000,
    }
}

fn keys() -> Vec<SigningKey> {
    (0..N)
        .map(|i| key_from_seed(42, &format!("replica-{i}")))
        .collect()
}

fn cluster() -> Cluster {
    ClusterConfig::from_keys(1, &keys())
        .validate()
        .expect("valid cluster")
}

fn replica(id: ReplicaId) -> Replica {
    let mut r =
        Replica::new(cluster(), id, keys()[id as usize].clone(), params()).expect("replica");
    r.step(Input::Tick { now_us: T0 });
    r
}

fn client_key(n: u64) -> SigningKey {
    key_from_seed(n, "client")
}

fn request(client: u64, ts: u64, op: &[u8]) -> SignedRequest {
    let key = client_key(client);
    SignedRequest::sign(
        Request {
            client: ClientId::new(&key.verifying_key(), 0),
            timestamp: ts,
            operation: op.to_vec(),
        },
        &key,
    )
}

fn signed<T: Payload>(from: ReplicaId, payload: T) -> Signed<T> {
    Signed::sign(from, payload, &keys()[from as usize])
}

/// Replica `from`'s commit for batch `digest` at view 0, sequence 1.
fn first_commit(from: ReplicaId, digest: Digest) -> Signed<Commit> {
    signed(
        from,
        Commit {
            view: 0,
            seq: 1,
            digest,
        },
    )
}

fn pre_prepare(view: View, seq: Seq, batch: Batch) -> PrePrepareMsg {
    let from = (view % u64::from(N)) as ReplicaId;
    PrePrepareMsg {
        header: signed(
            from,
            PrePrepare {
                view,
                seq,
                digest: batch.digest(),
            },
        ),
        batch,
    }
}

fn batch(hlc_us: u64, requests: Vec<SignedRequest>) -> Batch {
    Batch {
        hlc: Hlc {
            physical_us: hlc_us,
            logical: 0,
        },
        requests,
    }
}

fn recv(r: &mut Replica, m: Message) -> Vec<Output> {
    r.step(Input::Receive(m.encode()))
}

fn sends(out: &[Output]) -> Vec<(Target, &Message)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, message } => Some((*to, message)),
            _ => None,
        })
        .collect()
}

/// Feeds `input` and checks it was refused for `reason` with no state change.
fn assert_refused(r: &mut Replica, input: Input, reason: Reject) {
    let before = r.fingerprint();
    let count = r.stats().rejected(reason);
    let out = r.step(input);
    assert_eq!(
        out,
        vec![Output::Rejected(reason)],
        "expected only a refusal for {reason:?}"
    );
    assert_eq!(r.stats().rejected(reason), count + 1);
    assert_eq!(
        r.fingerprint(),
        before,
        "a refused input must not change state ({reason:?})"
    );
}

fn refuse(r: &mut Replica, m: Message, reason: Reject) {
    assert_refused(r, Input::Receive(m.encode()), reason);
}

// ----- construction -------------------------------------------------------

#[test]
fn new_checks_identity_and_parameters() {
    let k = keys();
    assert_eq!(
        Replica::new(cluster(), 9, k[0].clone(), params()).unwrap_err(),
        ReplicaError::UnknownId(9)
    );
    assert_eq!(
        Replica::new(cluster(), 1, k[0].clone(), params()).unwrap_err(),
        ReplicaError::KeyMismatch(1)
    );
    let bad = Params {
        watermark_window: 3,
        ..params()
    };
    assert!(matches!(
        Replica::new(cluster(), 0, k[0].clone(), bad),
        Err(ReplicaError::BadParams(_))
    ));
    let bad = Params {
        batch_bytes_max: 100,
        ..params()
    };
    assert!(matches!(
        Replica::new(cluster(), 0, k[0].clone(), bad),
        Err(ReplicaError::BadParams(_))
    ));
    let bad = Params {
        checkpoint_interval: 0,
        ..params()
    };
    assert!(matches!(
        Replica::new(cluster(), 0, k[0].clone(), bad),
        Err(ReplicaError::BadParams(_))
    ));
}

// ----- requests -------------------------------------------------------------

#[test]
fn primary_batches_a_request_and_persists_before_sending() {
    let mut p = replica(0);
    let out = recv(&mut p, Message::Request(request(1, 10, b"a")));
    let persist = out
        .iter()
        .position(|o| matches!(o, Output::Persist(Record::PrePrepare(_))));
    let send = out.iter().position(|o| {
        matches!(
            o,
            Output::Send {
                message: Message::PrePrepare(_),
                ..
            }
        )
    });
    assert!(persist.expect("persisted") < send.expect("sent"));
    let Some(Output::Send {
        to,
        message: Message::PrePrepare(pp),
    }) = out.get(send.unwrap_or(0))
    else {
        panic!("pre-prepare expected")
    };
    assert_eq!(*to, Target::AllReplicas);
    assert_eq!(pp.header.payload.seq, 1);
    assert_eq!(pp.batch.requests.len(), 1);
    assert_eq!(pp.batch.hlc.physical_us, T0);
    assert_eq!(p.stats().batches_proposed, 1);
    // The same request again is not proposed twice.
    let out = recv(&mut p, Message::Request(request(1, 10, b"a")));
    assert!(sends(&out).is_empty());
}

#[test]
fn busy_primary_accumulates_until_the_batch_delay() {
    let mut p = Replica::new(
        cluster(),
        0,
        keys()[0].clone(),
        Params {
            batch_delay_us: 1_000,
            ..params()
        },
    )
    .expect("replica");
    p.step(Input::Tick { now_us: T0 });
    recv(&mut p, Message::Request(request(1, 10, b"a")));
    // One batch in flight: the next requests wait for the delay.
    assert!(sends(&recv(&mut p, Message::Request(request(2, 10, b"b")))).is_empty());
    assert!(sends(&recv(&mut p, Message::Request(request(3, 10, b"c")))).is_empty());
    let out = p.step(Input::Tick { now_us: T0 + 1_000 });
    let batches: Vec<_> = sends(&out)
        .into_iter()
        .filter_map(|(_, m)| match m {
            Message::PrePrepare(pp) => Some(pp.batch.requests.len()),
            _ => None,
        })
        .collect();
    assert_eq!(batches, vec![2]);
}

/// The operations of every request the outputs pre-prepare, in order.
fn proposed_operations(out: &[Output]) -> Vec<Vec<u8>> {
    sends(out)
        .into_iter()
        .filter_map(|(_, m)| match m {
            Message::PrePrepare(pp) => Some(pp.batch.requests.clone()),
            _ => None,
        })
        .flatten()
        .map(|r| r.request.operation)
        .collect()
}

#[test]
fn a_busy_primary_checks_signatures_per_batch_and_drops_forgeries() {
    let mut p = Replica::new(
        cluster(),
        0,
        keys()[0].clone(),
        Params {
            batch_delay_us: 1_000,
            batches_in_flight_max: 4,
            pending_requests_max: 16,
            ..params()
        },
    )
    .expect("replica");
    p.step(Input::Tick { now_us: T0 });
    recv(&mut p, Message::Request(request(1, 10, b"a")));
    // Busy now: requests queue unchecked.
    let forged = |client, ts| {
        let mut f = request(client, ts, b"x");
        f.request.operation = b"forged".to_vec();
        f
    };
    assert_eq!(recv(&mut p, Message::Request(forged(2, 10))), vec![]);
    assert_eq!(recv(&mut p, Message::Request(forged(3, 10))), vec![]);
    recv(&mut p, Message::Request(request(4, 10, b"d")));
    // Client 3's genuine request arrives while a forgery of it waits: it is
    // checked at once and takes the forgery's place.
    assert_eq!(recv(&mut p, Message::Request(request(3, 10, b"c"))), vec![]);
    let out = p.step(Input::Tick { now_us: T0 + 1_000 });
    assert_eq!(
        out.iter()
            .filter(|o| **o == Output::Rejected(Reject::BadSignature))
            .count(),
        1,
        "client 2's forgery is refused when the batch is cut"
    );
    assert_eq!(
        proposed_operations(&out),
        vec![b"c".to_vec(), b"d".to_vec()]
    );
    // Client 2's genuine request is still taken after its forgery failed.
    recv(&mut p, Message::Request(request(2, 10, b"b")));
    let out = p.step(Input::Tick { now_us: T0 + 2_000 });
    assert_eq!(proposed_operations(&out), vec![b"b".to_vec()]);
}

/// Sessions 0..n of client `client`'s key, one request each at `ts`,
/// signed as one bundle.
fn bundle(client: u64, n: u32, ts: u64, op: &[u8]) -> Vec<SignedRequest> {
    let key = client_key(client);
    let requests = (0..n)
        .map(|session| Request {
            client: ClientId::new(&key.verifying_key(), session),
            timestamp: ts,
            operation: [op, &[b'0' + session as u8]].concat(),
        })
        .collect();
    crate::message::sign_requests(requests, &key)
}

#[test]
fn a_bundle_costs_one_check_and_a_forged_member_only_itself() {
    let mut p = Replica::new(
        cluster(),
        0,
        keys()[0].clone(),
        Params {
            batch_delay_us: 1_000,
            pending_requests_max: 64,
            batches_in_flight_max: 4,
            ..params()
        },
    )
    .expect("replica");
    p.step(Input::Tick { now_us: T0 });
    recv(&mut p, Message::Request(request(1, 10, b"a")));
    // Busy: a bundle of four sessions queues unchecked, and is checked
    // with one signature when the batch is cut.
    let before = p.stats().clone();
    for r in bundle(2, 4, 10, b"b") {
        assert_eq!(recv(&mut p, Message::Request(r)), vec![]);
    }
    let out = p.step(Input::Tick { now_us: T0 + 1_000 });
    assert_eq!(proposed_operations(&out).len(), 4);
    assert_eq!(p.stats().requests_checked - before.requests_checked, 4);
    assert_eq!(
        p.stats().request_signatures_checked - before.request_signatures_checked,
        1
    );
    // One member changed after signing: only it is refused; the bundle's
    // other requests still prove themselves under the shared signature.
    let mut next = bundle(2, 4, 20, b"c");
    next[2].request.operation = b"forged".to_vec();
    for r in next {
        assert_eq!(recv(&mut p, Message::Request(r)), vec![]);
    }
    let out = p.step(Input::Tick { now_us: T0 + 2_000 });
    assert_eq!(
        out.iter()
            .filter(|o| **o == Output::Rejected(Reject::BadSignature))
            .count(),
        1
    );
    assert_eq!(
        proposed_operations(&out),
        vec![b"c0".to_vec(), b"c1".to_vec(), b"c3".to_vec()]
    );
    // A backup takes the pre-prepare of such a bundle with one check too.
    let mut b = replica(1);
    let batch = Batch {
        hlc: Hlc {
            physical_us: T0,
            logical: 0,
        },
        requests: bundle(3, 5, 10, b"d"),
    };
    let out = recv(&mut b, Message::PrePrepare(pre_prepare(0, 1, batch)));
    assert!(sends(&out)
        .iter()
        .any(|(_, m)| matches!(m, Message::Prepare(_))));
    assert_eq!(
        (
            b.stats().requests_checked,
            b.stats().request_signatures_checked
        ),
        (5, 1)
    );
}

#[test]
fn a_bundle_proof_of_impossible_shape_is_refused_on_arrival_even_when_busy() {
    let mut p = replica(0);
    recv(&mut p, Message::Request(request(1, 10, b"a")));
    // Busy, so signatures wait for the batch; the proof's shape does not.
    let mut long = bundle(2, 3, 10, b"x").remove(1);
    long.path = vec![Digest::of(b"padding"); 33];
    refuse(&mut p, Message::Request(long), Reject::BadRequest);
    let mut outside = bundle(3, 3, 10, b"x").remove(2);
    outside.index = 3;
    refuse(&mut p, Message::Request(outside), Reject::BadRequest);
}

#[test]
fn only_batches_waiting_a_status_interval_are_sent_again() {
    let mut p = replica(0);
    recv(&mut p, Message::Request(request(1, 10, b"a")));
    // Busy from T0: the next status (with retransmissions) is due one
    // interval after the tick that saw it busy.
    p.step(Input::Tick {
        now_us: T0 + 10_000,
    });
    p.step(Input::Tick {
        now_us: T0 + 40_000,
    });
    recv(&mut p, Message::Request(request(2, 10, b"b")));
    // Then batch 1 (proposed at T0) has waited long enough to be sent
    // again; batch 2 (proposed 20 ms before) has not.
    let out = p.step(Input::Tick {
        now_us: T0 + 60_000,
    });
    assert!(
        sends(&out)
            .iter()
            .any(|(_, m)| matches!(m, Message::Status(_))),
        "a status round"
    );
    let resent: Vec<Seq> = sends(&out)
        .into_iter()
        .filter_map(|(_, m)| match m {
            Message::PrePrepare(pp) => Some(pp.header.payload.seq),
            _ => None,
        })
        .collect();
    assert_eq!(resent, vec![1]);
}

#[test]
fn batches_are_bounded_in_bytes() {
    let mut p = Replica::new(
        cluster(),
        0,
        keys()[0].clone(),
        Params {
            batch_bytes_max: 2 * (1000 + 128),
            batch_delay_us: 1_000,
            ..params()
        },
    )
    .expect("replica");
    p.step(Input::Tick { now_us: T0 });
    recv(&mut p, Message::Request(request(1, 10, &[1; 1000])));
    for c in 2..6 {
        recv(&mut p, Message::Request(request(c, 10, &[c as u8; 1000])));
    }
    let out = p.step(Input::Tick { now_us: T0 + 1_000 });
    let sizes: Vec<_> = sends(&out)
        .into_iter()
        .filter_map(|(_, m)| match m {
            Message::PrePrepare(pp) => Some(pp.batch.requests.len()),
            _ => None,
        })
        .collect();
    // One batch is in flight (the first request) and in-flight is capped
    // at 2, so one more batch goes out: two requests fill its byte budget.
    assert_eq!(sizes, vec![2]);
}

#[test]
fn backup_forwards_requests_and_suspects_a_silent_primary() {
    let mut b = replica(1);
    let out = recv(&mut b, Message::Request(request(1, 10, b"a")));
    assert_eq!(sends(&out).len(), 1);
    assert_eq!(sends(&out)[0].0, Target::Replica(0));
    // Before the timeout nothing happens; after it, a VIEW-CHANGE for view 1.
    let out = b.step(Input::Tick {
        now_us: T0 + 10_000,
    });
    assert!(!sends(&out)
        .iter()
        .any(|(_, m)| matches!(m, Message::ViewChange(_))));
    let out = b.step(Input::Tick {
        now_us: T0 + 100_001,
    });
    assert!(out.contains(&Output::Persist(Record::View {
        view: 1,
        active: false
    })));
    assert!(sends(&out)
        .iter()
        .any(|(_, m)| matches!(m, Message::ViewChange(vc) if vc.payload.new_view == 1)));
    assert!(!b.view_active());
    assert_eq!(b.stats().view_changes_started, 1);
    // While changing views, normal-case messages of the new view wait.
    let d = Digest::of(b"x");
    refuse(
        &mut b,
        Message::Prepare(signed(
            2,
            Prepare {
                view: 1,
                seq: 1,
                digest: d,
            },
        )),
        Reject::ViewChanging,
    );
    refuse(
        &mut b,
        Message::Prepare(signed(
            2,
            Prepare {
                view: 0,
                seq: 1,
                digest: d,
            },
        )),
        Reject::OldView,
    );
    // Alone in the view change, it does not run ahead to view 2.
    let out = b.step(Input::Tick {
        now_us: T0 + 10_000_000,
    });
    assert_eq!(b.view(), 1);
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Persist(Record::View { view: 2, .. }))));
}

#[test]
fn bad_requests_are_refused() {
    let mut p = replica(0);
    let mut tampered = request(1, 10, b"a");
    tampered.request.operation = b"b".to_vec();
    refuse(&mut p, Message::Request(tampered), Reject::BadSignature);
    refuse(
        &mut p,
        Message::Request(request(1, 10, &[0; 2000])),
        Reject::BadRequest,
    );
}

// ----- bytes ---------------------------------------------------------------

#[test]
fn malformed_and_oversized_frames_are_refused() {
    let mut r = replica(1);
    assert_refused(
        &mut r,
        Input::Receive(vec![0xff, 0x01, 0x02]),
        Reject::Malformed,
    );
    assert_refused(&mut r, Input::Receive(Vec::new()), Reject::Malformed);
    let mut truncated = Message::Request(request(1, 1, b"x")).encode();
    truncated.pop();
    assert_refused(&mut r, Input::Receive(truncated), Reject::Malformed);
    assert_refused(
        &mut r,
        Input::Receive(vec![0; (1 << 20) + 1]),
        Reject::Oversized,
    );
    let reply = crate::message::certify_replies(
        2,
        vec![Reply {
            view: 0,
            client: ClientId {
                key: [0; 32],
                session: 0,
            },
            timestamp: 1,
            hlc: Hlc::default(),
            result: vec![],
        }],
        &keys()[2],
    )
    .remove(0);
    refuse(&mut r, Message::Reply(reply), Reject::NotForReplicas);
}

// ----- pre-prepare -----------------------------------------------------------

#[test]
fn backup_accepts_a_pre_prepare_and_prepares() {
    let mut b = replica(1);
    let pp = pre_prepare(0, 1, batch(T0, vec![request(1, 10, b"a")]));
    let out = recv(&mut b, Message::PrePrepare(pp.clone()));
    assert_eq!(out[0], Output::Persist(Record::PrePrepare(pp.clone())));
    let s = sends(&out);
    assert_eq!(s.len(), 1);
    let (Target::AllReplicas, Message::Prepare(p)) = s[0] else {
        panic!("prepare expected")
    };
    assert_eq!(
        p.payload,
        Prepare {
            view: 0,
            seq: 1,
            digest: pp.header.payload.digest
        }
    );
    assert_eq!(p.from, 1);
    // A duplicate is ignored silently.
    assert!(recv(&mut b, Message::PrePrepare(pp)).is_empty());
}

#[test]
fn pre_prepare_refusals() {
    let mut b = replica(1);
    let good = batch(T0, vec![request(1, 10, b"a")]);
    // Not from the primary.
    let mut pp = pre_prepare(0, 1, good.clone());
    pp.header = signed(2, pp.header.payload);
    refuse(&mut b, Message::PrePrepare(pp), Reject::WrongSender);
    // Bad signature.
    let mut pp = pre_prepare(0, 1, good.clone());
    pp.header.signature.0[0] ^= 1;
    refuse(&mut b, Message::PrePrepare(pp), Reject::BadSignature);
    // Future view (the primary of view 1 is replica 1 itself; use view 2).
    refuse(
        &mut b,
        Message::PrePrepare(pre_prepare(2, 1, good.clone())),
        Reject::FutureView,
    );
    // Outside the watermarks (window 4).
    refuse(
        &mut b,
        Message::PrePrepare(pre_prepare(0, 5, good.clone())),
        Reject::OutsideWatermarks,
    );
    refuse(
        &mut b,
        Message::PrePrepare(pre_prepare(0, 0, good.clone())),
        Reject::OutsideWatermarks,
    );
    // Batch that does not match the digest.
    let mut pp = pre_prepare(0, 1, good.clone());
    pp.batch.requests.clear();
    refuse(&mut b, Message::PrePrepare(pp), Reject::DigestMismatch);
    // A request the client did not sign.
    let mut forged = request(1, 10, b"a");
    forged.request.operation = b"evil".to_vec();
    refuse(
        &mut b,
        Message::PrePrepare(pre_prepare(0, 1, batch(T0, vec![forged]))),
        Reject::BadBatch,
    );
    // Too far ahead of the backup's clock (100 ms allowed).
    refuse(
        &mut b,
        Message::PrePrepare(pre_prepare(0, 1, batch(T0 + 200_000, vec![]))),
        Reject::HlcAhead,
    );
    // A null batch carries no time and is not checked against clocks.
    assert!(!recv(
        &mut b,
        Message::PrePrepare(pre_prepare(0, 3, Batch::null()))
    )
    .is_empty());
    // Accept seq 2, then a seq-1 stamp after it goes backwards.
    let later = pre_prepare(0, 2, batch(T0, vec![request(2, 10, b"b")]));
    assert!(!recv(&mut b, Message::PrePrepare(later)).is_empty());
    refuse(
        &mut b,
        Message::PrePrepare(pre_prepare(0, 1, batch(T0 + 5, vec![]))),
        Reject::HlcBackwards,
    );
    // A different batch for a sequence that has one: equivocation.
    let other = pre_prepare(0, 2, batch(T0, vec![request(3, 10, b"c")]));
    refuse(&mut b, Message::PrePrepare(other), Reject::Conflicting);
}

#[test]
fn unknown_sender_is_refused() {
    let mut b = replica(1);
    let p = Signed {
        from: 9,
        payload: Prepare {
            view: 0,
            seq: 1,
            digest: Digest::of(b"x"),
        },
        signature: Sig([0; 64]),
    };
    refuse(&mut b, Message::Prepare(p), Reject::UnknownSender);
    let c = Signed {
        from: 7,
        payload: Checkpoint {
            seq: 2,
            state_digest: Digest::of(b"x"),
        },
        signature: Sig([0; 64]),
    };
    refuse(&mut b, Message::Checkpoint(c), Reject::UnknownSender);
}

// ----- prepare and commit -------------------------------------------------

#[test]
fn prepare_and_commit_refusals() {
    let mut b = replica(1);
    let d = Digest::of(b"x");
    refuse(
        &mut b,
        Message::Prepare(signed(
            0,
            Prepare {
                view: 0,
                seq: 1,
                digest: d,
            },
        )),
        Reject::WrongSender,
    );
    refuse(
        &mut b,
        Message::Prepare(signed(
            2,
            Prepare {
                view: 0,
                seq: 9,
                digest: d,
            },
        )),
        Reject::OutsideWatermarks,
    );
    refuse(
        &mut b,
        Message::Commit(signed(
            2,
            Commit {
                view: 0,
                seq: 9,
                digest: d,
            },
        )),
        Reject::OutsideWatermarks,
    );
    refuse(
        &mut b,
        Message::Commit(signed(
            2,
            Commit {
                view: 3,
                seq: 1,
                digest: d,
            },
        )),
        Reject::FutureView,
    );
    let mut c = signed(
        2,
        Commit {
            view: 0,
            seq: 1,
            digest: d,
        },
    );
    c.payload.seq = 2;
    refuse(&mut b, Message::Commit(c), Reject::BadSignature);
    // First prepare from replica 2 stored; a different one is equivocation.
    assert!(recv(
        &mut b,
        Message::Prepare(signed(
            2,
            Prepare {
                view: 0,
                seq: 1,
                digest: d
            }
        ))
    )
    .is_empty());
    let other = Prepare {
        view: 0,
        seq: 1,
        digest: Digest::of(b"y"),
    };
    refuse(
        &mut b,
        Message::Prepare(signed(2, other)),
        Reject::Conflicting,
    );
    assert!(recv(
        &mut b,
        Message::Commit(signed(
            3,
            Commit {
                view: 0,
                seq: 1,
                digest: d
            }
        ))
    )
    .is_empty());
    let other = Commit {
        view: 0,
        seq: 1,
        digest: Digest::of(b"y"),
    };
    refuse(
        &mut b,
        Message::Commit(signed(3, other)),
        Reject::Conflicting,
    );
}

#[test]
fn prepared_then_committed_then_executed() {
    let mut b = replica(1);
    let pp = pre_prepare(0, 1, batch(T0, vec![request(1, 10, b"a")]));
    let d = pp.header.payload.digest;
    recv(&mut b, Message::PrePrepare(pp));
    // Own prepare + one more is 2f = 2: prepared, commit sent after the
    // certificate is persisted.
    let out = recv(
        &mut b,
        Message::Prepare(signed(
            2,
            Prepare {
                view: 0,
                seq: 1,
                digest: d,
            },
        )),
    );
    let cert = out
        .iter()
        .position(|o| matches!(o, Output::Persist(Record::Prepared(_))));
    let commit = out.iter().position(|o| {
        matches!(
            o,
            Output::Send {
                message: Message::Commit(_),
                ..
            }
        )
    });
    assert!(cert.expect("certificate persisted") < commit.expect("commit sent"));
    // Own commit + one: not yet 2f + 1.
    assert!(recv(
        &mut b,
        Message::Commit(signed(
            0,
            Commit {
                view: 0,
                seq: 1,
                digest: d
            }
        ))
    )
    .iter()
    .all(|o| !matches!(o, Output::Execute(_))));
    let out = recv(
        &mut b,
        Message::Commit(signed(
            2,
            Commit {
                view: 0,
                seq: 1,
                digest: d,
            },
        )),
    );
    assert!(out.contains(&Output::Persist(Record::Committed {
        view: 0,
        seq: 1,
        digest: d
    })));
    let Some(Output::Execute(e)) = out.last() else {
        panic!("execute expected")
    };
    assert_eq!(
        (e.seq, e.digest, e.requests.len(), e.snapshot_wanted),
        (1, d, 1, false)
    );
    assert_eq!(
        e.hlc,
        Hlc {
            physical_us: T0,
            logical: 0
        }
    );
    // The result produces a signed reply to the client.
    let out = b.step(Input::Executed {
        seq: 1,
        results: vec![b"A".to_vec()],
        snapshot: None,
    });
    let s = sends(&out);
    let (Target::Client(c), Message::Reply(r)) = s[0] else {
        panic!("reply expected")
    };
    assert_eq!(c, request(1, 10, b"a").request.client);
    assert_eq!(
        (r.reply.timestamp, r.reply.result.as_slice()),
        (10, b"A".as_slice())
    );
    assert_eq!(b.last_executed(), 1);
    // A retry of that request gets the stored reply again, not a re-run.
    let out = recv(&mut b, Message::Request(request(1, 10, b"a")));
    assert!(
        matches!(sends(&out)[0], (Target::Client(_), Message::Reply(r2)) if r2.reply.result == b"A")
    );
    assert_eq!(b.stats().replies_resent, 1);
    // An older request of that client is stale.
    refuse(
        &mut b,
        Message::Request(request(1, 9, b"old")),
        Reject::StaleRequest,
    );
}

#[test]
fn votes_past_the_quorum_and_exact_copies_cost_no_signature_check() {
    let mut b = replica(1);
    let pp = pre_prepare(0, 1, batch(T0, vec![request(1, 10, b"a")]));
    let d = pp.header.payload.digest;
    recv(&mut b, Message::PrePrepare(pp));
    let prepare = |from| {
        signed(
            from,
            Prepare {
                view: 0,
                seq: 1,
                digest: d,
            },
        )
    };
    let commit = |from| first_commit(from, d);
    let garbled = |mut s: Sig| {
        s.0[0] ^= 1;
        s
    };
    // Before the quorum a bad signature is checked and refused...
    let mut bad = prepare(2);
    bad.signature = garbled(bad.signature);
    refuse(&mut b, Message::Prepare(bad), Reject::BadSignature);
    recv(&mut b, Message::Prepare(prepare(2)));
    // ...after it (own prepare + replica 2's = 2f) the third one is not
    // even checked: a bad copy is dropped without a refusal or a change.
    let mut late = prepare(3);
    late.signature = garbled(late.signature);
    let (state, rejected) = (b.fingerprint(), b.stats().rejected_total());
    assert_eq!(recv(&mut b, Message::Prepare(late)), vec![]);
    // A retransmitted copy of a held vote is dropped the same way.
    assert_eq!(recv(&mut b, Message::Prepare(prepare(2))), vec![]);
    assert_eq!(b.fingerprint(), state);
    recv(&mut b, Message::Commit(commit(0)));
    let out = recv(&mut b, Message::Commit(commit(2)));
    assert!(out.iter().any(|o| matches!(o, Output::Execute(_))));
    let mut late = commit(3);
    late.signature = garbled(late.signature);
    assert_eq!(recv(&mut b, Message::Commit(late)), vec![]);
    assert_eq!(recv(&mut b, Message::Commit(commit(0))), vec![]);
    assert_eq!(b.stats().rejected_total(), rejected);
}

#[test]
fn executed_must_answer_the_outstanding_batch() {
    let mut b = replica(1);
    assert_refused(
        &mut b,
        Input::Executed {
            seq: 1,
            results: vec![],
            snapshot: None,
        },
        Reject::UnexpectedExecution,
    );
}

// ----- checkpoints -----------------------------------------------------------

#[test]
fn checkpoint_refusals() {
    let mut b = replica(1);
    let d = Digest::of(b"s");
    refuse(
        &mut b,
        Message::Checkpoint(signed(
            2,
            Checkpoint {
                seq: 3,
                state_digest: d,
            },
        )),
        Reject::BadCheckpoint,
    );
    refuse(
        &mut b,
        Message::Checkpoint(signed(
            2,
            Checkpoint {
                seq: 0,
                state_digest: d,
            },
        )),
        Reject::BadCheckpoint,
    );
    refuse(
        &mut b,
        Message::Checkpoint(signed(
            2,
            Checkpoint {
                seq: 100,
                state_digest: d,
            },
        )),
        Reject::OutsideWatermarks,
    );
    let mut c = signed(
        2,
        Checkpoint {
            seq: 2,
            state_digest: d,
        },
    );
    c.payload.state_digest = Digest::of(b"t");
    refuse(&mut b, Message::Checkpoint(c), Reject::BadSignature);
}

#[test]
fn state_transfer_refusals() {
    let mut b = replica(1);
    let state = CheckpointState {
        hlc: Hlc::default(),
        snapshot: b"snap".to_vec(),
        client_table: vec![],
    };
    let digest = state.digest(2);
    let proof: Vec<_> = (0..3)
        .map(|i| {
            signed(
                i,
                Checkpoint {
                    seq: 2,
                    state_digest: digest,
                },
            )
        })
        .collect();
    // Too few signatures.
    let st = StateTransfer {
        proof: proof[..2].to_vec(),
        state: state.clone(),
    };
    refuse(
        &mut b,
        Message::State(Box::new(st)),
        Reject::BadCheckpointProof,
    );
    // The same signer twice.
    let st = StateTransfer {
        proof: vec![proof[0].clone(), proof[0].clone(), proof[1].clone()],
        state: state.clone(),
    };
    refuse(
        &mut b,
        Message::State(Box::new(st)),
        Reject::BadCheckpointProof,
    );
    // State that does not hash to the proof's digest.
    let mut wrong = state.clone();
    wrong.snapshot = b"evil".to_vec();
    let st = StateTransfer {
        proof: proof.clone(),
        state: wrong,
    };
    refuse(&mut b, Message::State(Box::new(st)), Reject::BadState);
    // The real one is installed.
    let out = recv(
        &mut b,
        Message::State(Box::new(StateTransfer { proof, state })),
    );
    assert!(out.contains(&Output::RestoreState {
        seq: 2,
        snapshot: Some(b"snap".to_vec())
    }));
    assert_eq!(
        (b.stable_seq(), b.last_executed(), b.stats().state_transfers),
        (2, 2, 1)
    );
}

// ----- view change -----------------------------------------------------------

fn view_change(from: ReplicaId, new_view: View) -> Signed<ViewChange> {
    signed(
        from,
        ViewChange {
            new_view,
            stable_seq: 0,
            checkpoint_proof: vec![],
            prepared: vec![],
        },
    )
}

#[test]
fn view_change_refusals() {
    let mut b = replica(2);
    // Bad proof: claims a stable checkpoint without one.
    let bad = signed(
        3,
        ViewChange {
            new_view: 1,
            stable_seq: 2,
            checkpoint_proof: vec![],
            prepared: vec![],
        },
    );
    refuse(&mut b, Message::ViewChange(bad), Reject::BadViewChange);
    // A certificate with too few prepares.
    let pp = pre_prepare(0, 1, batch(T0, vec![]));
    let cert = PreparedCert {
        pre_prepare: pp.clone(),
        prepares: vec![signed(
            1,
            Prepare {
                view: 0,
                seq: 1,
                digest: pp.header.payload.digest,
            },
        )],
    };
    let bad = signed(
        3,
        ViewChange {
            new_view: 1,
            stable_seq: 0,
            checkpoint_proof: vec![],
            prepared: vec![cert],
        },
    );
    refuse(&mut b, Message::ViewChange(bad), Reject::BadViewChange);
    let mut forged = view_change(3, 1);
    forged.signature.0[5] ^= 1;
    refuse(&mut b, Message::ViewChange(forged), Reject::BadSignature);
    // A new view that is not from the new primary.
    let nv = signed(
        3,
        NewView {
            view: 1,
            view_changes: vec![],
            pre_prepares: vec![],
        },
    );
    refuse(&mut b, Message::NewView(nv), Reject::WrongSender);
    // From the right primary but without a quorum of view-changes.
    let nv = signed(
        1,
        NewView {
            view: 1,
            view_changes: vec![view_change(1, 1)],
            pre_prepares: vec![],
        },
    );
    refuse(&mut b, Message::NewView(nv), Reject::BadNewView);
}

#[test]
fn f_plus_one_view_changes_pull_a_replica_along_and_new_view_installs() {
    let pp = pre_prepare(0, 1, batch(T0, vec![request(1, 10, b"a")]));
    let d = pp.header.payload.digest;
    let prepares: Vec<_> = (1..3)
        .map(|i| {
            signed(
                i,
                Prepare {
                    view: 0,
                    seq: 1,
                    digest: d,
                },
            )
        })
        .collect();
    let cert = PreparedCert {
        pre_prepare: pp.clone(),
        prepares,
    };
    let with_cert = |from| {
        signed(
            from,
            ViewChange {
                new_view: 1,
                stable_seq: 0,
                checkpoint_proof: vec![],
                prepared: vec![cert.clone()],
            },
        )
    };
    // Replica 1 is the primary of view 1.
    let mut p = replica(1);
    assert!(sends(&recv(&mut p, Message::ViewChange(with_cert(2)))).is_empty());
    let out = recv(&mut p, Message::ViewChange(view_change(3, 1)));
    // f + 1 = 2 others want view 1: it joins, has 2f + 1, and starts view 1.
    let nv = sends(&out)
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::NewView(nv) => Some(nv.clone()),
            _ => None,
        })
        .expect("new view");
    assert!(p.view_active() && p.view() == 1 && p.is_primary());
    // The prepared batch is carried into view 1 at the same sequence.
    assert_eq!(nv.payload.pre_prepares.len(), 1);
    assert_eq!(nv.payload.pre_prepares[0].batch, pp.batch);
    // A backup re-verifies it and prepares the carried batch in view 1.
    let mut b = replica(2);
    let out = recv(&mut b, Message::NewView(nv.clone()));
    assert!(b.view_active() && b.view() == 1);
    assert!(sends(&out).iter().any(|(_, m)| matches!(m, Message::Prepare(p) if p.payload == Prepare { view: 1, seq: 1, digest: d })));
    // A tampered new view (the carried batch replaced) is refused.
    let mut b = replica(3);
    let mut bad = nv.payload.clone();
    let other = batch(T0, vec![]);
    bad.pre_prepares[0] = PrePrepareMsg {
        header: signed(
            1,
            PrePrepare {
                view: 1,
                seq: 1,
                digest: other.digest(),
            },
        ),
        batch: other,
    };
    refuse(&mut b, Message::NewView(signed(1, bad)), Reject::BadNewView);
    // Old-view messages are refused once in view 1.
    let mut b = replica(2);
    recv(&mut b, Message::NewView(nv));
    refuse(
        &mut b,
        Message::Prepare(signed(
            3,
            Prepare {
                view: 0,
                seq: 1,
                digest: d,
            },
        )),
        Reject::OldView,
    );
}

// ----- an in-memory cluster ------------------------------------------------

/// A tiny application: appends operations; the result is the count so far.
#[derive(Default, Clone, Debug, Serialize, Deserialize)]
struct App {
    ops: Vec<Vec<u8>>,
}

struct Net {
    replicas: Vec<Option<Replica>>,
    apps: Vec<App>,
    /// Requests each replica's application ran (not adopted).
    ran: Vec<u64>,
    records: Vec<Vec<Record>>,
    queue: VecDeque<(usize, Vec<u8>)>,
    to_client: Vec<Message>,
    down: BTreeSet<usize>,
    now: u64,
    /// Deliver each replica's queued frames together, as one
    /// [`Input::ReceiveMany`], as a loaded driver does.
    grouped: bool,
}

impl Net {
    fn new() -> Net {
        Net::with_params(params())
    }

    fn with_params(params: Params) -> Net {
        let replica = |id: ReplicaId| {
            let mut r = Replica::new(cluster(), id, keys()[id as usize].clone(), params.clone())
                .expect("replica");
            r.step(Input::Tick { now_us: T0 });
            r
        };
        Net {
            replicas: (0..N).map(|i| Some(replica(i))).collect(),
            apps: vec![App::default(); N as usize],
            ran: vec![0; N as usize],
            records: vec![Vec::new(); N as usize],
            queue: VecDeque::new(),
            to_client: Vec::new(),
            down: BTreeSet::new(),
            now: T0,
            grouped: false,
        }
    }

    fn input(&mut self, i: usize, input: Input) {
        let Some(r) = self.replicas[i].as_mut() else {
            return;
        };
        let outputs = r.step(input);
        self.apply(i, outputs);
    }

    /// Does what a driver does with replica `i`'s outputs.
    fn apply(&mut self, i: usize, outputs: Vec<Output>) {
        let mut work: VecDeque<Output> = outputs.into();
        while let Some(o) = work.pop_front() {
            match o {
                Output::Persist(rec) => self.records[i].push(rec),
                Output::Send { to, message } => {
                    let bytes = message.encode();
                    match to {
                        Target::Replica(j) => self.queue.push_back((j as usize, bytes)),
                        Target::AllReplicas => {
                            for j in (0..N as usize).filter(|j| *j != i) {
                                self.queue.push_back((j, bytes.clone()));
                            }
                        }
                        Target::Client(_) => self.to_client.push(message),
                    }
                }
                Output::RestoreState { snapshot, .. } => {
                    self.apps[i] = snapshot.map_or_else(App::default, |s| {
                        postcard::from_bytes(&s).expect("snapshot")
                    });
                }
                Output::Execute(e) => {
                    let app = &mut self.apps[i];
                    let mut results = Vec::new();
                    for r in &e.requests {
                        app.ops.push(r.operation.clone());
                        results.push((app.ops.len() as u64).to_le_bytes().to_vec());
                    }
                    match e.adopted {
                        Some(adopted) => results = adopted,
                        None => self.ran[i] += e.requests.len() as u64,
                    }
                    let snapshot = e.snapshot_wanted.then(|| encode(&*app));
                    let r = self.replicas[i].as_mut().expect("running");
                    work.extend(r.step(Input::Executed {
                        seq: e.seq,
                        results,
                        snapshot,
                    }));
                }
                Output::Rejected(_) => {}
            }
        }
    }

    fn deliver_all(&mut self) {
        if self.grouped {
            while !self.queue.is_empty() {
                let mut frames: Vec<Vec<Vec<u8>>> = vec![Vec::new(); N as usize];
                for (to, bytes) in self.queue.drain(..) {
                    frames[to].push(bytes);
                }
                for (to, frames) in frames.into_iter().enumerate() {
                    if !self.down.contains(&to) && !frames.is_empty() {
                        self.input(to, Input::ReceiveMany(frames));
                    }
                }
            }
        }
        while let Some((to, bytes)) = self.queue.pop_front() {
            if !self.down.contains(&to) {
                self.input(to, Input::Receive(bytes));
            }
        }
    }

    fn tick(&mut self, by_us: u64) {
        self.now += by_us;
        for i in 0..N as usize {
            if !self.down.contains(&i) {
                self.input(i, Input::Tick { now_us: self.now });
            }
        }
        self.deliver_all();
    }

    fn submit(&mut self, to: usize, r: SignedRequest) {
        self.input(to, Input::Receive(Message::Request(r).encode()));
        self.deliver_all();
    }

    fn r(&self, i: usize) -> &Replica {
        self.replicas[i].as_ref().expect("running")
    }
}

#[test]
fn cluster_orders_executes_checkpoints_and_collects_garbage() {
    let mut net = Net::new();
    let mut client = Client::new(cluster(), client_key(1), 0, 100_000);
    for k in 0..5u64 {
        let (_, m) = client
            .submit(format!("op{k}").into_bytes(), T0 + k)
            .expect("idle client");
        let Message::Request(r) = m else {
            panic!("request")
        };
        net.submit(0, r);
        let done = std::mem::take(&mut net.to_client)
            .iter()
            .find_map(|m| client.on_message(m))
            .expect("f + 1 matching replies");
        assert_eq!(done.result, (k + 1).to_le_bytes().to_vec());
        assert!(done.signers.len() >= 2);
    }
    for i in 0..N as usize {
        assert_eq!(net.r(i).last_executed(), 5);
        assert_eq!(net.apps[i].ops.len(), 5);
        // Checkpoints every 2: stable at 4, and the log below it is gone.
        assert_eq!(net.r(i).stable_seq(), 4);
        assert!(net.r(i).log.keys().all(|s| *s > 4));
        assert_eq!(net.r(i).stats().checkpoints_stable, 2);
    }
}

/// One request through four replicas makes and checks the fewest
/// signatures the normal case allows: one pre-prepare, three prepares, four
/// commits and four reply roots made; each backup checks the pre-prepare,
/// one other prepare (its own counts) and two commits, the primary two
/// prepares and two commits; votes past a quorum are dropped unchecked.
#[test]
fn one_request_costs_twelve_signatures_and_sixteen_checks() {
    let mut net = Net::new();
    let counts = |net: &Net| -> Vec<SignatureCounts> {
        (0..N as usize)
            .map(|i| net.r(i).signature_counts())
            .collect()
    };
    let before = counts(&net);
    net.submit(0, request(1, 10, b"a"));
    assert_eq!(net.to_client.len(), N as usize, "every replica replies");
    let counts: Vec<SignatureCounts> = counts(&net)
        .iter()
        .zip(&before)
        .map(|(a, b)| SignatureCounts {
            made: a.made - b.made,
            checked: a.checked - b.checked,
        })
        .collect();
    for (i, c) in counts.iter().enumerate() {
        assert_eq!(c.made, 3, "replica {i}: {c:?}");
        assert_eq!(c.checked, 4, "replica {i}: {c:?}");
    }
    let total = |f: fn(&SignatureCounts) -> u64| counts.iter().map(f).sum::<u64>();
    assert_eq!((total(|c| c.made), total(|c| c.checked)), (12, 16));
}

/// Frames delivered together have their replica signatures checked as
/// one batch, and no more of them than one by one: three requests cost
/// the same checks as when each frame comes alone, most of them in
/// batches, and every replica runs the same operations.
#[test]
fn frames_that_arrive_together_are_checked_in_batches_and_no_more() {
    let run = |grouped: bool| {
        let mut net = Net::new();
        net.grouped = grouped;
        for ts in 10..13 {
            net.submit(0, request(1, ts, b"a"));
        }
        net
    };
    let (alone, together) = (run(false), run(true));
    let mut batched = 0;
    for i in 0..N as usize {
        let (a, t) = (alone.r(i), together.r(i));
        assert_eq!(a.last_executed(), 3);
        assert_eq!(t.last_executed(), 3);
        assert_eq!(together.apps[i].ops, alone.apps[i].ops, "replica {i}");
        assert_eq!(t.signature_counts(), a.signature_counts(), "replica {i}");
        assert_eq!(a.stats().signatures_batched, 0);
        batched += t.stats().signatures_batched;
    }
    let checked: u64 = (0..N as usize)
        .map(|i| together.r(i).signature_counts().checked)
        .sum();
    assert!(batched * 3 > checked * 2, "{batched} of {checked} batched");
}

/// A batch with a forged signature fails as a whole; its messages are then
/// checked one by one, so only the forgery is refused, and its sender's
/// later messages are not batched with others (it cannot make every batch
/// fail and be checked twice).
#[test]
fn a_forgery_among_frames_together_is_refused_alone_and_its_sender_unbatched() {
    let mut b = replica(1);
    let pp = pre_prepare(0, 1, batch(T0, vec![request(1, 10, b"a")]));
    let d = pp.header.payload.digest;
    let prepare = signed(
        2,
        Prepare {
            view: 0,
            seq: 1,
            digest: d,
        },
    );
    let out = b.step(Input::ReceiveMany(vec![
        Message::PrePrepare(pp).encode(),
        Message::Prepare(prepare).encode(),
    ]));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Send {
            message: Message::Commit(_),
            ..
        }
    )));
    assert_eq!(b.stats().signatures_batched, 2);
    let commit = |from| first_commit(from, d);
    let mut forged = commit(0);
    forged.signature.0[5] ^= 1;
    let out = b.step(Input::ReceiveMany(vec![
        Message::Commit(forged).encode(),
        Message::Commit(commit(2)).encode(),
        Message::Commit(commit(3)).encode(),
    ]));
    assert_eq!(b.stats().signature_batches_failed, 1);
    assert_eq!(b.stats().rejected(Reject::BadSignature), 1);
    assert!(out.contains(&Output::Rejected(Reject::BadSignature)));
    assert!(out.iter().any(|o| matches!(o, Output::Execute(_))));
    // Replica 0's checkpoint is checked alone; replica 2's, then alone too.
    let checkpoint = |from| {
        Message::Checkpoint(signed(
            from,
            Checkpoint {
                seq: 2,
                state_digest: Digest([7; 32]),
            },
        ))
        .encode()
    };
    let (batched, checked) = (b.stats().signatures_batched, b.signature_counts().checked);
    b.step(Input::ReceiveMany(vec![checkpoint(0), checkpoint(2)]));
    assert_eq!(b.stats().signatures_batched, batched);
    assert_eq!(b.signature_counts().checked, checked + 2);
    assert_eq!(b.stats().signature_batches_failed, 1);
}

#[test]
fn cluster_changes_view_when_the_primary_is_down() {
    let mut net = Net::new();
    net.down.insert(0);
    for i in 1..N as usize {
        net.submit(i, request(1, 10, b"a"));
    }
    // View change after the timeout, then the new primary (1) orders it.
    for _ in 0..10 {
        net.tick(60_000);
    }
    for i in 1..N as usize {
        assert_eq!(
            (net.r(i).view(), net.r(i).view_active()),
            (1, true),
            "replica {i}"
        );
        assert_eq!(net.r(i).last_executed(), 1);
    }
}

#[test]
fn lagging_replica_catches_up_by_state_transfer() {
    let mut net = Net::new();
    net.down.insert(3);
    for k in 0..6u64 {
        net.submit(0, request(k, 10, b"x"));
    }
    assert_eq!(net.r(0).stable_seq(), 6);
    net.down.remove(&3);
    // Replica 3's STATUS (a slow heartbeat while idle) shows it behind the
    // low watermark: it gets the state.
    for _ in 0..8 {
        net.tick(60_000);
    }
    assert_eq!(net.r(3).last_executed(), 6);
    assert_eq!(net.r(3).stats().state_transfers, 1);
    assert_eq!(net.apps[3].ops.len(), 6);
    // And takes part in ordering again.
    net.submit(0, request(9, 10, b"y"));
    assert_eq!(net.r(3).last_executed(), 7);
}

#[test]
fn recovered_replica_rebuilds_state_from_its_records() {
    let mut net = Net::new();
    for k in 0..3u64 {
        net.submit(0, request(k, 10, b"x"));
    }
    let before = (
        net.r(2).last_executed(),
        net.r(2).stable_seq(),
        net.apps[2].ops.clone(),
    );
    let (r, outputs) = Replica::recover(cluster(), 2, keys()[2].clone(), params(), &net.records[2])
        .expect("recover");
    assert!(matches!(
        outputs.first(),
        Some(Output::RestoreState { seq: 2, .. })
    ));
    net.replicas[2] = Some(r);
    net.apps[2] = App::default();
    // Replay the recovery outputs through the same execution path.
    let mut work: VecDeque<Output> = outputs.into();
    while let Some(o) = work.pop_front() {
        match o {
            Output::RestoreState { snapshot, .. } => {
                net.apps[2] = snapshot.map_or_else(App::default, |s| {
                    postcard::from_bytes(&s).expect("snapshot")
                });
            }
            Output::Execute(e) => {
                let app = &mut net.apps[2];
                let mut results = Vec::new();
                for r in &e.requests {
                    app.ops.push(r.operation.clone());
                    results.push((app.ops.len() as u64).to_le_bytes().to_vec());
                }
                let r = net.replicas[2].as_mut().expect("running");
                work.extend(r.step(Input::Executed {
                    seq: e.seq,
                    results,
                    snapshot: None,
                }));
            }
            _ => {}
        }
    }
    let after = (
        net.r(2).last_executed(),
        net.r(2).stable_seq(),
        net.apps[2].ops.clone(),
    );
    assert_eq!(before, after);
    // It keeps working with the others.
    net.tick(1_000);
    net.submit(0, request(7, 10, b"z"));
    assert_eq!(net.r(2).last_executed(), 4);
}

#[test]
fn a_replica_that_lost_its_deferred_records_commits_and_executes_again() {
    let mut net = Net::new();
    net.submit(0, request(1, 10, b"a"));
    assert_eq!(net.r(2).last_executed(), 1);
    let ops = net.apps[2].ops.clone();
    // A crash loses what the driver had not written yet: the deferrable
    // records, here the batch's `Committed`.
    let kept: Vec<Record> = net.records[2]
        .iter()
        .filter(|r| !r.deferrable())
        .cloned()
        .collect();
    assert!(
        kept.len() < net.records[2].len(),
        "the run deferred nothing"
    );
    assert!(kept.iter().any(|r| matches!(r, Record::Prepared(_))));
    let (r, outputs) =
        Replica::recover(cluster(), 2, keys()[2].clone(), params(), &kept).expect("recover");
    net.replicas[2] = Some(r);
    net.apps[2] = App::default();
    net.records[2] = kept;
    net.apply(2, outputs);
    // Prepared but not known to be committed: it must not run yet.
    assert_eq!(net.r(2).last_executed(), 0);
    // The others' commits reach it again, and it runs the batch once.
    for _ in 0..20 {
        net.tick(100_000);
        if net.r(2).last_executed() == 1 {
            break;
        }
    }
    assert_eq!(net.r(2).last_executed(), 1);
    assert_eq!(net.apps[2].ops, ops);
}

#[test]
fn status_relays_committed_messages_to_a_replica_that_missed_them() {
    let mut net = Net::new();
    net.down.insert(3);
    net.submit(0, request(1, 10, b"a"));
    net.down.remove(&3);
    assert_eq!(net.r(3).last_executed(), 0);
    for _ in 0..8 {
        net.tick(60_000);
    }
    assert_eq!(net.r(3).last_executed(), 1);
}

#[test]
fn mutated_frames_never_panic_and_change_nothing_when_refused() {
    // Valid frames of every kind, then thousands of random corruptions of
    // them: each must be handled (most refused) without a panic.
    let pp = pre_prepare(0, 1, batch(T0, vec![request(1, 10, b"a")]));
    let d = pp.header.payload.digest;
    let cert = PreparedCert {
        pre_prepare: pp.clone(),
        prepares: (1..3)
            .map(|i| {
                signed(
                    i,
                    Prepare {
                        view: 0,
                        seq: 1,
                        digest: d,
                    },
                )
            })
            .collect(),
    };
    let vc = signed(
        3,
        ViewChange {
            new_view: 1,
            stable_seq: 0,
            checkpoint_proof: vec![],
            prepared: vec![cert],
        },
    );
    let frames: Vec<Vec<u8>> = vec![
        Message::Request(request(1, 10, b"a")).encode(),
        Message::PrePrepare(pp).encode(),
        Message::Prepare(signed(
            2,
            Prepare {
                view: 0,
                seq: 1,
                digest: d,
            },
        ))
        .encode(),
        Message::Commit(signed(
            2,
            Commit {
                view: 0,
                seq: 1,
                digest: d,
            },
        ))
        .encode(),
        Message::Checkpoint(signed(
            2,
            Checkpoint {
                seq: 2,
                state_digest: d,
            },
        ))
        .encode(),
        Message::ViewChange(vc.clone()).encode(),
        Message::NewView(signed(
            1,
            NewView {
                view: 1,
                view_changes: vec![vc],
                pre_prepares: vec![],
            },
        ))
        .encode(),
        Message::Status(signed(
            2,
            Status {
                view: 0,
                view_active: true,
                stable_seq: 0,
                last_executed: 0,
            },
        ))
        .encode(),
    ];
    let mut rng = crate::sim::Rng::new(7);
    let mut b = replica(2);
    let rounds: u64 = if cfg!(debug_assertions) { 400 } else { 3000 };
    for round in 0..rounds {
        let mut f = frames[(round % frames.len() as u64) as usize].clone();
        match rng.below(3) {
            0 => {
                let i = rng.below(f.len() as u64) as usize;
                f[i] ^= 1 << rng.below(8);
            }
            1 => f.truncate(rng.below(f.len() as u64) as usize),
            _ => {
                let i = rng.below(f.len() as u64) as usize;
                f[i] = rng.next_u64() as u8;
                f.push(rng.next_u64() as u8);
            }
        }
        let before = b.fingerprint();
        let out = b.step(Input::Receive(f));
        if let [Output::Rejected(_)] = out.as_slice() {
            assert_eq!(b.fingerprint(), before, "a refusal changed state");
        }
    }
    assert!(b.stats().rejected(Reject::Malformed) > 0);
    assert!(b.stats().rejected(Reject::BadSignature) > 0);
}

// ----- regressions found by the simulator --------------------------------

/// The primary of a view, restarted, could not hand the NEW-VIEW to a
/// replica still changing views: the NEW-VIEW was not persisted.
#[test]
fn regression_recovered_primary_still_serves_its_new_view() {
    // Replica 1 becomes primary of view 1; keep what it persists.
    let mut p = replica(1);
    let mut records = Vec::new();
    for vc in [view_change(2, 1), view_change(3, 1)] {
        for o in recv(&mut p, Message::ViewChange(vc)) {
            if let Output::Persist(r) = o {
                records.push(r);
            }
        }
    }
    assert!(p.view_active() && p.view() == 1);
    assert!(records.iter().any(|r| matches!(r, Record::NewView(_))));
    // Records survive their encoding, and a torn one is detected.
    for r in &records {
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes).as_ref(), Some(r));
        assert_eq!(Record::decode(&bytes[..bytes.len() - 1]), None);
    }
    let (mut recovered, _) =
        Replica::recover(cluster(), 1, keys()[1].clone(), params(), &records).expect("recover");
    recovered.step(Input::Tick { now_us: T0 });
    assert!(recovered.view_active() && recovered.view() == 1);
    // A replica still changing to view 1 reports it; the NEW-VIEW comes back.
    let status = signed(
        2,
        Status {
            view: 1,
            view_active: false,
            stable_seq: 0,
            last_executed: 0,
        },
    );
    let out = recv(&mut recovered, Message::Status(status));
    assert!(sends(&out)
        .iter()
        .any(|(to, m)| *to == Target::Replica(2) && matches!(m, Message::NewView(_))));
}

/// Replicas waiting for a NEW-VIEW from a silent primary never moved on
/// when the third wanted a later view: the escalation timer needed 2f + 1
/// view-changes for exactly the current view.
#[test]
fn regression_escalation_counts_view_changes_for_later_views() {
    let mut b = replica(0);
    b.step(Input::Receive(
        Message::Request(request(1, 10, b"a")).encode(),
    ));
    // Replica 0 is primary of view 0; make it join view 1 via f + 1 others.
    recv(&mut b, Message::ViewChange(view_change(2, 1)));
    recv(&mut b, Message::ViewChange(view_change(3, 2)));
    // It joined view 1 (the smallest wanted); 0, 2 want 1 and 3 wants 2:
    // 2f + 1 want view 1 or later, so the timer runs and it moves on.
    assert_eq!((b.view(), b.view_active()), (1, false));
    let out = b.step(Input::Tick {
        now_us: T0 + 10_000_000,
    });
    assert_eq!(b.view(), 2);
    assert!(out.contains(&Output::Persist(Record::View {
        view: 2,
        active: false
    })));
}

/// A primary whose batch could not commit (a correct backup had left for a
/// later view) waited forever: only backups timed requests.
#[test]
fn regression_primary_times_its_own_pending_requests() {
    let mut p = replica(0);
    recv(&mut p, Message::Request(request(1, 10, b"a")));
    assert_eq!(p.stats().batches_proposed, 1);
    let out = p.step(Input::Tick {
        now_us: T0 + 100_001,
    });
    assert!(out.contains(&Output::Persist(Record::View {
        view: 1,
        active: false
    })));
}

#[test]
fn compacted_records_recover_the_same_replica() {
    let mut net = Net::new();
    for k in 0..7u64 {
        net.submit(0, request(k, 10, b"x"));
    }
    let full = net.records[1].clone();
    let mut compacted = full.clone();
    compact_records(&mut compacted);
    assert!(
        compacted.len() < full.len(),
        "compaction dropped the covered records"
    );
    assert!(compacted.iter().all(|r| r.seq().is_none_or(|s| s >= 6)));
    let (a, out_a) =
        Replica::recover(cluster(), 1, keys()[1].clone(), params(), &full).expect("full");
    let (b, out_b) =
        Replica::recover(cluster(), 1, keys()[1].clone(), params(), &compacted).expect("compacted");
    assert_eq!(out_a, out_b);
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_eq!((b.stable_seq(), b.last_executed()), (6, 6));
}

// ----- partial execution ---------------------------------------------------

fn partial_params() -> Params {
    Params {
        partial_execution_min: 1,
        ..params()
    }
}

/// Submits one request through `client` to the primary and returns who
/// answered it, once f + 1 replies match.
fn submit_via(net: &mut Net, client: &mut Client, op: &[u8], ts: u64) -> Completed {
    let (_, m) = client.submit(op.to_vec(), ts).expect("idle client");
    let Message::Request(r) = m else {
        panic!("request")
    };
    net.submit(0, r);
    std::mem::take(&mut net.to_client)
        .iter()
        .find_map(|m| client.on_message(m))
        .expect("f + 1 matching replies")
}

#[test]
fn partial_execution_runs_each_batch_on_f_plus_one_backups_and_the_rest_adopt() {
    let mut net = Net::with_params(partial_params());
    let mut client = Client::new(cluster(), client_key(1), 0, 100_000);
    let mut runs = vec![0u64; N as usize];
    for k in 0..4u64 {
        let seq = k + 1;
        let executors = cluster().executors(0, seq).expect("n = 4 has 3 backups");
        assert_eq!(executors.len(), 2);
        assert!(!executors.contains(&0), "the primary is not an executor");
        for e in &executors {
            runs[*e as usize] += 1;
        }
        let done = submit_via(&mut net, &mut client, format!("op{k}").as_bytes(), T0 + k);
        assert_eq!(done.result, (k + 1).to_le_bytes().to_vec());
        // Only the replicas that ran the batch answered the client.
        assert!(done.signers.iter().all(|s| executors.contains(s)));
    }
    assert_eq!(net.ran, runs, "each batch ran on its two executors only");
    for (i, ran) in runs.iter().enumerate() {
        let r = net.r(i);
        assert_eq!(r.last_executed(), 4);
        // Every replica's state moved, ran or adopted...
        assert_eq!(net.apps[i].ops.len(), 4, "replica {i}");
        assert_eq!(r.stats().batches_adopted, 4 - ran, "replica {i}");
        assert_eq!(r.stats().adoptions_abandoned, 0);
        // ...and alike: the checkpoints at 2 and 4 became stable.
        assert_eq!(r.stable_seq(), 4, "replica {i}");
        assert_eq!(
            r.client_entry(&client.id()).map(|e| e.result.clone()),
            Some(4u64.to_le_bytes().to_vec())
        );
    }
}

#[test]
fn a_silent_executor_is_passed_over_and_the_others_run_the_batch() {
    let mut net = Net::with_params(partial_params());
    // Seq 1 runs on replicas 2 and 3; 3 is down, so 0 and 1 get one share
    // where they need two.
    assert_eq!(cluster().executors(0, 1), Some(vec![2, 3]));
    net.down.insert(3);
    let mut client = Client::new(cluster(), client_key(1), 0, 100_000);
    let (_, m) = client.submit(b"a".to_vec(), T0).expect("idle client");
    let Message::Request(r) = m else {
        panic!("request")
    };
    net.submit(0, r);
    assert_eq!(net.r(0).last_executed(), 0, "replica 0 waits for results");
    assert_eq!(net.r(2).last_executed(), 1, "replica 2 ran it");
    net.tick(partial_params().adopt_timeout_us);
    for i in 0..3 {
        assert_eq!(net.r(i).last_executed(), 1, "replica {i}");
        assert_eq!(net.apps[i].ops.len(), 1);
    }
    assert_eq!(net.ran, vec![1, 1, 1, 0], "0 and 1 ran it after the wait");
    assert_eq!(net.r(0).stats().adoptions_abandoned, 1);
    let done = std::mem::take(&mut net.to_client)
        .iter()
        .find_map(|m| client.on_message(m))
        .expect("f + 1 matching replies after the wait");
    assert_eq!(done.result, 1u64.to_le_bytes().to_vec());
    // Seq 2 runs on 3 and 1: replica 0 passes over 3, which it now
    // suspects, and runs the batch at once instead of waiting again.
    assert_eq!(cluster().executors(0, 2), Some(vec![3, 1]));
    let done = submit_via(&mut net, &mut client, b"b", T0 + 1);
    assert_eq!(done.result, 2u64.to_le_bytes().to_vec());
    assert_eq!(net.r(0).last_executed(), 2);
    assert_eq!(net.r(0).stats().adoptions_abandoned, 2);
    assert_eq!(net.ran[0], 2);
}

/// A primary under partial execution whose batch at seq 1 (run by 2 and
/// 3) committed: it waits for their results. Returns the batch digest.
fn waiting_primary() -> (Replica, Digest) {
    let mut r = Replica::new(cluster(), 0, keys()[0].clone(), partial_params()).expect("replica");
    r.step(Input::Tick { now_us: T0 });
    let out = recv(&mut r, Message::Request(request(1, 10, b"a")));
    let pp = sends(&out)
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::PrePrepare(pp) => Some(pp.clone()),
            _ => None,
        })
        .expect("a pre-prepare");
    let digest = pp.header.payload.digest;
    for from in 1..N {
        let p = Prepare {
            view: 0,
            seq: 1,
            digest,
        };
        recv(&mut r, Message::Prepare(signed(from, p)));
    }
    for from in 1..N {
        let c = Commit {
            view: 0,
            seq: 1,
            digest,
        };
        let out = recv(&mut r, Message::Commit(signed(from, c)));
        assert!(!out.iter().any(|o| matches!(o, Output::Execute(_))));
    }
    (r, digest)
}

fn share(from: ReplicaId, digest: Digest, result: &[u8], carry: bool) -> Message {
    let results = vec![ResultBytes(result.to_vec())];
    Message::Results(Box::new(SharedResults {
        share: signed(
            from,
            ResultShare {
                seq: 1,
                batch: digest,
                results: results_digest(results.iter().map(|r| r.0.as_slice())),
            },
        ),
        results: carry.then_some(results),
    }))
}

fn executes(out: &[Output]) -> Vec<&Execute> {
    out.iter()
        .filter_map(|o| match o {
            Output::Execute(e) => Some(e),
            _ => None,
        })
        .collect()
}

#[test]
fn disagreeing_executors_make_the_others_run_the_batch_at_once() {
    let (mut r, digest) = waiting_primary();
    let out = recv(&mut r, share(2, digest, b"one", true));
    assert!(executes(&out).is_empty());
    // The second executor disagrees: no f + 1 can form, so replica 0 runs
    // the batch itself without waiting for the timeout.
    let out = recv(&mut r, share(3, digest, b"two", true));
    let ex = executes(&out);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].adopted, None, "run, not adopted");
    assert_eq!(r.stats().adoptions_abandoned, 1);
}

#[test]
fn agreeing_executors_are_adopted_and_results_too_large_to_send_are_run() {
    let (mut r, digest) = waiting_primary();
    recv(&mut r, share(2, digest, b"same", true));
    // The second share may come without the results; one copy suffices.
    let out = recv(&mut r, share(3, digest, b"same", false));
    let ex = executes(&out);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].adopted, Some(vec![b"same".to_vec()]));
    let out = r.step(Input::Executed {
        seq: 1,
        results: vec![b"same".to_vec()],
        snapshot: None,
    });
    assert!(
        !sends(&out)
            .iter()
            .any(|(_, m)| matches!(m, Message::Reply(_))),
        "an adopting replica does not answer the client"
    );
    assert_eq!(r.stats().batches_adopted, 1);

    // A share that says its results were too large to send: nothing to
    // adopt, so the replica runs the batch at once.
    let (mut r, digest) = waiting_primary();
    let out = recv(&mut r, share(2, digest, b"big", false));
    let ex = executes(&out);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].adopted, None);
}

#[test]
fn result_share_refusals() {
    let mut r = Replica::new(cluster(), 0, keys()[0].clone(), partial_params()).expect("replica");
    r.step(Input::Tick { now_us: T0 });
    let results = vec![ResultBytes(b"x".to_vec())];
    let good = ResultShare {
        seq: 1,
        batch: Digest::of(b"batch"),
        results: results_digest(results.iter().map(|r| r.0.as_slice())),
    };
    let message = |share: Signed<ResultShare>, results: Option<Vec<ResultBytes>>| {
        Message::Results(Box::new(SharedResults { share, results }))
    };
    // Results that do not hash to the signed digest.
    refuse(
        &mut r,
        message(signed(2, good), Some(vec![ResultBytes(b"y".to_vec())])),
        Reject::DigestMismatch,
    );
    // A forged signature.
    let mut forged = signed(2, good);
    forged.from = 3;
    refuse(
        &mut r,
        message(forged, Some(results.clone())),
        Reject::BadSignature,
    );
    // An unknown sender.
    let mut unknown = signed(2, good);
    unknown.from = 9;
    refuse(&mut r, message(unknown, None), Reject::UnknownSender);
    // Too far ahead of what the replica executed.
    let far = ResultShare {
        seq: 1 + 4 * params().batches_in_flight_max,
        ..good
    };
    refuse(
        &mut r,
        message(signed(2, far), None),
        Reject::OutsideWatermarks,
    );
    // A good one is kept.
    let out = recv(&mut r, message(signed(2, good), Some(results)));
    assert!(out.is_empty());
    assert_eq!(r.shares.get(&1).map(|s| s.len()), Some(1));
}
