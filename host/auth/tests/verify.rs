//! Each caveat kind, attenuation, revocation, use counting, discharges and
//! bad input, through the public API.

mod common;

use std::sync::{Arc, Barrier};

use common::*;
use voidbox_auth::*;

fn denied_kind(r: Result<Authorized, Denied>) -> DeniedKind {
    r.expect_err("expected a denial").kind
}

#[test]
fn a_token_without_caveats_allows_everything_asked() {
    let f = Fixture::new();
    let ok = f.verify(&f.mint(&[]), &request()).unwrap();
    assert_eq!(ok.budget, Budget::UNLIMITED);
    assert_eq!(ok.grants, Grants::Any);
    assert_eq!(ok.uses_limit, None);
}

#[test]
fn tool_caveats_match_digest_and_name() {
    let f = Fixture::new();
    let t = f.mint(&[&format!("tool = {}", digest(7)), "tool-name = wc"]);
    f.verify(&t, &request()).unwrap();
    let other = Request {
        tool_digest: digest(8),
        ..request()
    };
    let e = f.verify(&t, &other).unwrap_err();
    assert_eq!(e.kind, DeniedKind::WrongTool);
    assert_eq!(
        e.caveat.as_deref(),
        Some(format!("tool = {}", digest(7)).as_str())
    );
    let renamed = Request {
        tool_name: "grep",
        ..request()
    };
    let e = f.verify(&t, &renamed).unwrap_err();
    assert_eq!(e.kind, DeniedKind::WrongTool);
    assert_eq!(e.caveat.as_deref(), Some("tool-name = wc"));
}

#[test]
fn expiry_is_exclusive_and_accepts_rfc3339() {
    let f = Fixture::new();
    let t = f.mint(&[&format!("expires < {}", NOW + 1)]);
    f.verify(&t, &request()).unwrap();
    let later = Request {
        now_unix: NOW + 1,
        ..request()
    };
    let e = f.verify(&t, &later).unwrap_err();
    assert_eq!(e.kind, DeniedKind::Expired);
    assert!(e.message.contains("expired at"), "{}", e.message);
    let rfc = f.mint(&["expires < 2027-01-15T08:00:00Z"]);
    assert_eq!(
        rfc.caveats()[0],
        CaveatEntry::FirstParty(Ok(Caveat::Expires(NOW)))
    );
    assert_eq!(denied_kind(f.verify(&rfc, &request())), DeniedKind::Expired);
}

#[test]
fn budgets_are_the_minimum_of_asked_and_every_caveat() {
    let f = Fixture::new();
    let t = f.mint(&[
        "fuel <= 1000",
        "memory <= 1MiB",
        "output-bytes <= 4096",
        "fuel <= 500",
        "output-bytes <= 9000",
    ]);
    let ok = f.verify(&t, &request()).unwrap();
    assert_eq!(
        ok.budget,
        Budget {
            fuel: 500,
            memory_bytes: 1 << 20,
            output_bytes: 4096
        }
    );
    let modest = Request {
        budget: Budget {
            fuel: 10,
            memory_bytes: 1 << 30,
            output_bytes: 1,
        },
        ..request()
    };
    let ok = f.verify(&t, &modest).unwrap();
    assert_eq!(
        ok.budget,
        Budget {
            fuel: 10,
            memory_bytes: 1 << 20,
            output_bytes: 1
        }
    );
    assert_eq!(ok.limits.fuel, Some(500));
}

#[test]
fn input_bytes_is_a_hard_limit() {
    let f = Fixture::new();
    let t = f.mint(&["input-bytes <= 100", "input-bytes <= 1KiB"]);
    f.verify(&t, &request()).unwrap();
    let big = Request {
        input_bytes: 101,
        ..request()
    };
    let e = f.verify(&t, &big).unwrap_err();
    assert_eq!(e.kind, DeniedKind::InputTooLarge);
    assert_eq!(e.caveat.as_deref(), Some("input-bytes <= 100"));
}

#[test]
fn grants_intersect_across_caveats() {
    let f = Fixture::new();
    let (a, b, c) = (digest(1), digest(2), digest(3));
    let t = f.mint(&[
        &format!("grant = blob:{a},blob:{b}"),
        &format!("grant = blob:{b},blob:{c}"),
    ]);
    let reads_b = [b];
    let ok = f
        .verify(
            &t,
            &Request {
                reads: &reads_b,
                ..request()
            },
        )
        .unwrap();
    assert_eq!(ok.grants, Grants::Only([b].into()));
    for blob in [a, c] {
        let reads = [blob];
        let e = f
            .verify(
                &t,
                &Request {
                    reads: &reads,
                    ..request()
                },
            )
            .unwrap_err();
        assert_eq!(e.kind, DeniedKind::NotGranted, "{blob}");
    }
}

#[test]
fn unknown_and_invalid_caveats_deny() {
    let f = Fixture::new();
    let t = f.mint(&[]).attenuate_raw("colour = blue").unwrap();
    let e = f.verify(&t, &request()).unwrap_err();
    assert_eq!(e.kind, DeniedKind::UnknownCaveat);
    assert_eq!(e.caveat.as_deref(), Some("colour = blue"));
    let t = f.mint(&[]).attenuate_raw("fuel < 10").unwrap();
    assert_eq!(
        denied_kind(f.verify(&t, &request())),
        DeniedKind::InvalidCaveat
    );
    assert!(inspect(&t)
        .iter()
        .any(|l| l.starts_with("DENIES EVERYTHING")));
}

#[test]
fn uses_are_counted_only_when_taken() {
    let f = Fixture::new();
    let t = f
        .mint(&["uses <= 2"])
        .attenuate(&caveats(&["uses <= 5"]))
        .unwrap();
    let counter = MemoryUseCounter::new();
    let ok = f.verify(&t, &request()).unwrap();
    assert_eq!(ok.uses_limit, Some(2));
    // Verifying again, or a denied verification, takes nothing.
    let wrong = Request {
        tool_name: "other",
        ..request()
    };
    f.verify(&t.attenuate(&caveats(&["tool-name = wc"])).unwrap(), &wrong)
        .unwrap_err();
    assert_eq!(counter.used(t.id()).unwrap(), 0);
    assert_eq!(ok.uses_left(&counter).unwrap(), Some(2));
    assert_eq!(ok.take_use(&counter).unwrap(), Some(1));
    assert_eq!(ok.uses_left(&counter).unwrap(), Some(1));
    assert_eq!(ok.take_use(&counter).unwrap(), Some(2));
    let e = ok.take_use(&counter).unwrap_err();
    assert_eq!(e.kind, DeniedKind::UsesExhausted);
    assert_eq!(e.caveat.as_deref(), Some("uses <= 2"));
    assert_eq!(counter.used(t.id()).unwrap(), 2);
    assert_eq!(
        ok.uses_left(&counter).unwrap_err().kind,
        DeniedKind::UsesExhausted
    );
    assert_eq!(counter.used(t.id()).unwrap(), 2, "asking takes nothing");
    let zero = f.mint(&["uses <= 0"]);
    assert_eq!(
        denied_kind(f.verify(&zero, &request())),
        DeniedKind::UsesExhausted
    );
}

#[test]
fn a_single_use_token_is_taken_exactly_once_under_contention() {
    let f = Fixture::new();
    let t = f.mint(&["uses <= 1"]);
    let ok = f.verify(&t, &request()).unwrap();
    let counter = Arc::new(MemoryUseCounter::new());
    let threads = 32;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (ok, counter, barrier) = (ok.clone(), counter.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                ok.take_use(&*counter).is_ok()
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|won| *won)
        .count();
    assert_eq!(wins, 1);
    assert_eq!(counter.used(t.id()).unwrap(), 1);
}

#[test]
fn revocation_covers_attenuated_children() {
    let f = Fixture::new();
    let parent = f.mint(&["fuel <= 10"]);
    let child = parent.attenuate(&caveats(&["fuel <= 5"])).unwrap();
    let revocations = MemoryRevocations::new();
    verify(&child, &request(), &f.keys, &revocations, &[]).unwrap();
    revocations.revoke(parent.id().clone());
    for t in [&parent, &child] {
        let e = verify(t, &request(), &f.keys, &revocations, &[]).unwrap_err();
        assert_eq!(e.kind, DeniedKind::Revoked);
    }
}

#[test]
fn tampering_and_wrong_keys_are_bad_signatures() {
    let f = Fixture::new();
    let t = f.mint(&["fuel <= 10", "tool-name = wc"]);
    let text = t.encode();
    // Replace the caveat text in place (same length): a tampered caveat.
    let bytes = base64_decode(&text);
    let tampered = base64_encode(&replace_bytes(&bytes, b"fuel <= 10", b"fuel <= 99"));
    let t2 = Token::decode(&tampered).unwrap();
    let e = f.verify(&t2, &request()).unwrap_err();
    assert_eq!(e.kind, DeniedKind::BadSignature);
    assert!(!e.message.contains(&f.root.to_hex()));
    // Same id, other key.
    let other = MemoryKeyStore::new();
    other.insert(f.key_id.clone(), RootKey::generate(&mut seeded(2)));
    let e = verify(&t, &request(), &other, &NoRevocations, &[]).unwrap_err();
    assert_eq!(e.kind, DeniedKind::BadSignature);
    // Unknown key id.
    let e = verify(&t, &request(), &MemoryKeyStore::new(), &NoRevocations, &[]).unwrap_err();
    assert_eq!(e.kind, DeniedKind::UnknownKey);
    // Dropping the last caveat (a token cannot be widened).
    let mut raw = bytes.clone();
    let cut = find(&raw, b"\x02\x0etool-name = wc\x00").unwrap();
    raw.drain(cut..cut + 17);
    let widened = Token::decode(&base64_encode(&raw)).unwrap();
    assert_eq!(
        denied_kind(f.verify(&widened, &request())),
        DeniedKind::BadSignature
    );
}

#[test]
fn malformed_tokens_are_denied_as_malformed() {
    let f = Fixture::new();
    let text = f.mint(&["fuel <= 10"]).encode();
    for bad in [
        "",
        "not a token!",
        &text[..text.len() - 5],
        &format!("{text}AAAA"),
        "AgEHdm9pZGJveAIEYWJjZAAABiAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let e = verify_encoded(bad, &request(), &f.keys, &NoRevocations).unwrap_err();
        assert_eq!(e.kind, DeniedKind::Malformed, "{bad:?}: {e}");
    }
    assert!(verify_encoded(&text, &request(), &f.keys, &NoRevocations).is_ok());
}

#[test]
fn denial_kinds_have_distinct_exit_codes_and_names() {
    let codes: std::collections::HashSet<u8> =
        DeniedKind::ALL.iter().map(|k| k.exit_code()).collect();
    let names: std::collections::HashSet<&str> =
        DeniedKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(codes.len(), DeniedKind::ALL.len());
    assert_eq!(names.len(), DeniedKind::ALL.len());
    assert_eq!(DeniedKind::Malformed.exit_code(), 20);
    assert_eq!(DeniedKind::Unavailable.exit_code(), 34);
}

#[test]
fn third_party_discharges_must_be_present_bound_and_valid() {
    let f = Fixture::new();
    let approver = ThirdPartyKey::generate(&mut seeded(3));
    let cid = "approve invocation 42";
    let token = f
        .mint(&["fuel <= 100"])
        .add_third_party_caveat("approver.example", &approver.caveat_key(cid), cid)
        .unwrap();
    assert!(inspect(&token)
        .iter()
        .any(|l| l.contains("needs a discharge from `approver.example`")));

    // Missing.
    assert_eq!(
        denied_kind(f.verify(&token, &request())),
        DeniedKind::DischargeMissing
    );

    // The approver, knowing only its key and the caveat id, discharges it.
    let discharge = Discharge::create(
        "approver.example",
        &approver.caveat_key(cid),
        cid,
        &caveats(&[&format!("expires < {}", NOW + 60), "fuel <= 50"]),
    )
    .unwrap();
    let unbound = verify(
        &token,
        &request(),
        &f.keys,
        &NoRevocations,
        std::slice::from_ref(&discharge),
    );
    assert_eq!(denied_kind(unbound), DeniedKind::DischargeUnbound);

    let bound = token.bind(&discharge).unwrap();
    let ok = verify(
        &token,
        &request(),
        &f.keys,
        &NoRevocations,
        std::slice::from_ref(&bound),
    )
    .unwrap();
    assert_eq!(ok.budget.fuel, 50, "the discharge's caveats count too");

    // The discharge's own caveats are enforced.
    let late = Request {
        now_unix: NOW + 60,
        ..request()
    };
    let e = verify(
        &token,
        &late,
        &f.keys,
        &NoRevocations,
        std::slice::from_ref(&bound),
    )
    .unwrap_err();
    assert_eq!(e.kind, DeniedKind::Expired);

    // Bound to another token: rejected (indistinguishable from a forgery).
    let other = f
        .mint(&[])
        .add_third_party_caveat("approver.example", &approver.caveat_key(cid), cid)
        .unwrap();
    let e = verify(
        &other,
        &request(),
        &f.keys,
        &NoRevocations,
        std::slice::from_ref(&bound),
    )
    .unwrap_err();
    assert_eq!(e.kind, DeniedKind::DischargeBadSignature);
    assert!(
        e.message.contains("bound to another token"),
        "{}",
        e.message
    );

    // Made with the wrong key.
    let forged = Discharge::create("x", &CaveatKey::from_bytes([9; 32]), cid, &[]).unwrap();
    let forged = token.bind(&forged).unwrap();
    let e = verify(&token, &request(), &f.keys, &NoRevocations, &[forged]).unwrap_err();
    assert_eq!(e.kind, DeniedKind::DischargeBadSignature);

    // Bundles carry the token and its discharges as one string.
    let bundle = encode_bundle(&token, &[bound]);
    verify_encoded(&bundle, &request(), &f.keys, &NoRevocations).unwrap();
    let (t2, ds) = decode_bundle(&bundle).unwrap();
    assert_eq!(t2, token);
    assert_eq!(ds.len(), 1);
}

#[test]
fn the_macaroon_crate_verifier_agrees() {
    let f = Fixture::new();
    let approver = ThirdPartyKey::generate(&mut seeded(4));
    let cid = "quota";
    let token = f
        .mint(&["fuel <= 100", "tool-name = wc"])
        .add_third_party_caveat("quota", &approver.caveat_key(cid), cid)
        .unwrap()
        .attenuate(&caveats(&["uses <= 3"]))
        .unwrap();
    let d = Discharge::create(
        "quota",
        &approver.caveat_key(cid),
        cid,
        &caveats(&["memory <= 4096"]),
    )
    .unwrap();
    let bound = token.bind(&d).unwrap();
    let ours = verify(
        &token,
        &request(),
        &f.keys,
        &NoRevocations,
        std::slice::from_ref(&bound),
    )
    .unwrap();
    let theirs = voidbox_auth::reference::verify_with_macaroon_crate(
        &token.encode(),
        &[&bound.encode()],
        &request(),
        &f.keys,
        &NoRevocations,
    )
    .unwrap();
    assert_eq!(ours, theirs);
    assert_eq!(ours.budget.memory_bytes, 4096);
    // And both refuse the unbound discharge.
    assert!(voidbox_auth::reference::verify_with_macaroon_crate(
        &token.encode(),
        &[&d.encode()],
        &request(),
        &f.keys,
        &NoRevocations,
    )
    .is_err());
}

#[test]
fn inspect_describes_caveats_in_plain_words() {
    let f = Fixture::new();
    let t = f.mint(&[
        "uses <= 1",
        "fuel <= 1000",
        "expires < 2027-01-15T08:00:00Z",
    ]);
    let lines = inspect(&t);
    assert!(
        lines[0].starts_with("token voidbox/v1/tenant-a/"),
        "{lines:?}"
    );
    assert_eq!(lines[1], "uses <= 1: single use: one invocation in total");
    assert_eq!(
        lines[2],
        "fuel <= 1000: at most 1000 units of fuel per invocation"
    );
    assert_eq!(
        lines[3],
        "expires < 1800000000: valid until 2027-01-15T08:00:00Z (Unix time 1800000000)"
    );
}

#[test]
fn token_ids_round_trip_and_are_canonical() {
    let f = Fixture::new();
    let t = f.mint(&[]);
    assert_eq!(t.location().as_deref(), Some(TOKEN_LOCATION));
    let text = t.id().to_string();
    assert_eq!(text.parse::<TokenId>().unwrap(), *t.id());
    assert!(text.to_uppercase().parse::<TokenId>().is_err());
    assert!("voidbox/v1/a b/00000000000000000000000000000000"
        .parse::<TokenId>()
        .is_err());
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn replace_bytes(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = find(hay, from).expect("pattern present");
    let mut out = hay.to_vec();
    out[at..at + from.len()].copy_from_slice(to);
    out
}

#[test]
fn every_single_byte_change_is_rejected_or_changes_nothing() {
    // Locations are not signed in macaroons, so a changed location may still
    // verify; nothing else may, and no change may widen what is authorized.
    let f = Fixture::new();
    let approver = ThirdPartyKey::generate(&mut seeded(5));
    let cid = "ok";
    let token = f
        .mint(&["fuel <= 100", "tool-name = wc", "uses <= 3"])
        .add_third_party_caveat("approver", &approver.caveat_key(cid), cid)
        .unwrap();
    let discharge = token
        .bind(
            &Discharge::create(
                "approver",
                &approver.caveat_key(cid),
                cid,
                &caveats(&["memory <= 9"]),
            )
            .unwrap(),
        )
        .unwrap();
    let expected = verify(
        &token,
        &request(),
        &f.keys,
        &NoRevocations,
        std::slice::from_ref(&discharge),
    )
    .unwrap();
    let (token_bytes, discharge_bytes) = (
        base64_decode(&token.encode()),
        base64_decode(&discharge.encode()),
    );
    let mut checked = 0;
    for which in 0..2 {
        let original = if which == 0 {
            &token_bytes
        } else {
            &discharge_bytes
        };
        for at in 0..original.len() {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut bytes = original.clone();
                bytes[at] ^= flip;
                let text = base64_encode(&bytes);
                let (t, d) = if which == 0 {
                    (Token::decode(&text), Ok(discharge.clone()))
                } else {
                    (Ok(token.clone()), Discharge::decode(&text))
                };
                let (Ok(t), Ok(d)) = (t, d) else { continue };
                checked += 1;
                if let Ok(got) = verify(&t, &request(), &f.keys, &NoRevocations, &[d]) {
                    assert_eq!(got, expected, "byte {at} of {which} changed by {flip:#x}");
                }
            }
        }
    }
    assert!(checked > 300, "only {checked} mutants decoded");
}

#[test]
fn too_many_caveats_is_an_error_not_a_panic() {
    let f = Fixture::new();
    let many = vec![Caveat::Fuel(1); CAVEATS_MAX + 1];
    assert!(matches!(
        Token::mint(&f.key_id, &f.root, &many, &mut OsEntropy),
        Err(TokenError::Wire(WireError::TooManyCaveats))
    ));
    let full = Token::mint(&f.key_id, &f.root, &many[1..], &mut OsEntropy).unwrap();
    assert!(full.attenuate(&[Caveat::Fuel(0)]).is_err());
    f.verify(&full, &request()).unwrap();
}
