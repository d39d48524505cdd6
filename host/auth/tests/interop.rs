//! Interoperability with pymacaroons, both ways: tokens (with caveats and a
//! bound third-party discharge) minted here are verified by pymacaroons, and
//! tokens minted by pymacaroons are verified here.
//!
//! Needs `python3`; installs pymacaroons with pip when it is missing and
//! fails (does not skip) when that is impossible.

mod common;

use std::process::Command;

use common::*;
use voidbox_auth::*;

fn ensure_pymacaroons() {
    let has = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    let import = || {
        let mut c = Command::new("python3");
        c.args(["-c", "import pymacaroons"]);
        c
    };
    if has(&mut import()) {
        return;
    }
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "--quiet", "pymacaroons"]);
    let installed = has(&mut pip) && has(&mut import());
    assert!(
        installed,
        "the interop test needs python3 with pymacaroons: `python3 -m pip install pymacaroons` \
         failed or python3 is missing; install python3 and pip (Debian: apt-get install \
         python3-pip) and run the test again"
    );
}

fn python(script: &str, args: &[&str]) -> String {
    ensure_pymacaroons();
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const VERIFY_HERE_MINTED: &str = r#"
import sys, binascii
from pymacaroons import Macaroon, Verifier
token, root, discharge, caveats = sys.argv[1], binascii.unhexlify(sys.argv[2]), sys.argv[3], sys.argv[4].split("|")
m = Macaroon.deserialize(token)
d = Macaroon.deserialize(discharge)
def verifier(preds):
    v = Verifier()
    for p in preds:
        v.satisfy_exact(p)
    return v
def fails(f):
    try:
        f()
        return False
    except Exception:
        return True
print("identifier", m.identifier_bytes.decode())
print("caveats", "|".join(c.caveat_id_bytes.decode() for c in m.first_party_caveats()))
print("verified", verifier(caveats).verify(m, root, [d]))
print("missing-caveat-fails", fails(lambda: verifier(caveats[1:]).verify(m, root, [d])))
print("wrong-key-fails", fails(lambda: verifier(caveats).verify(m, b"x" * 32, [d])))
print("no-discharge-fails", fails(lambda: verifier(caveats).verify(m, root, [])))
"#;

#[test]
fn pymacaroons_verifies_tokens_minted_here() {
    let f = Fixture::new();
    let texts = [
        format!("tool = {}", digest(7)),
        "fuel <= 1000000".to_owned(),
        "expires < 1900000000".to_owned(),
        "uses <= 1".to_owned(),
    ];
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let approver = ThirdPartyKey::generate(&mut OsEntropy);
    let cid = "approval-7";
    let token = f
        .mint(&refs)
        .add_third_party_caveat("approver", &approver.caveat_key(cid), cid)
        .unwrap()
        .attenuate(&caveats(&["input-bytes <= 4096"]))
        .unwrap();
    let discharge = Discharge::create(
        "approver",
        &approver.caveat_key(cid),
        cid,
        &caveats(&["memory <= 1024"]),
    )
    .unwrap();
    let bound = token.bind(&discharge).unwrap();
    let mut all: Vec<&str> = refs.clone();
    all.push("input-bytes <= 4096");
    all.push("memory <= 1024");
    let out = python(
        VERIFY_HERE_MINTED,
        &[
            &token.encode(),
            &f.root.to_hex(),
            &bound.encode(),
            &all.join("|"),
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("identifier {}", token.id()));
    assert_eq!(
        lines[1],
        format!("caveats {}|input-bytes <= 4096", refs.join("|"))
    );
    assert_eq!(
        lines[2..],
        [
            "verified True",
            "missing-caveat-fails True",
            "wrong-key-fails True",
            "no-discharge-fails True"
        ]
    );
    // And it verifies here too.
    verify(&token, &request(), &f.keys, &NoRevocations, &[bound]).unwrap();
}

const MINT_THERE: &str = r#"
import sys, binascii
from pymacaroons import Macaroon, MACAROON_V2
identifier, root, caveat_key = sys.argv[1], binascii.unhexlify(sys.argv[2]), binascii.unhexlify(sys.argv[3])
m = Macaroon(location="pymacaroons", identifier=identifier, key=root, version=MACAROON_V2)
for c in sys.argv[4].split("|"):
    m.add_first_party_caveat(c)
m.add_third_party_caveat("approver", caveat_key, "approval-py")
d = Macaroon(location="approver", identifier="approval-py", key=caveat_key, version=MACAROON_V2)
d.add_first_party_caveat("fuel <= 77")
print(m.serialize())
print(m.prepare_for_request(d).serialize())
print(d.serialize())
"#;

#[test]
fn tokens_minted_by_pymacaroons_verify_here() {
    let f = Fixture::new();
    let id = TokenId::new(f.key_id.clone(), [0x5a; 16]);
    let approver = ThirdPartyKey::generate(&mut OsEntropy);
    let caveat_key = approver.caveat_key("approval-py");
    let out = python(
        MINT_THERE,
        &[
            &id.to_string(),
            &f.root.to_hex(),
            &encode_hex(caveat_key.as_bytes()),
            &format!("tool-name = wc|fuel <= 1_000|expires < {}", NOW + 10),
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    let token = Token::decode(lines[0]).unwrap();
    let bound = Discharge::decode(lines[1]).unwrap();
    let unbound = Discharge::decode(lines[2]).unwrap();
    assert_eq!(*token.id(), id);
    assert_eq!(token.location().as_deref(), Some("pymacaroons"));
    assert_eq!(bound.location().as_deref(), Some("approver"));
    let ok = verify(
        &token,
        &request(),
        &f.keys,
        &NoRevocations,
        std::slice::from_ref(&bound),
    )
    .unwrap();
    assert_eq!(ok.budget.fuel, 77);
    assert_eq!(
        ok.limits.tool_names.iter().next().map(String::as_str),
        Some("wc")
    );
    let e = verify(&token, &request(), &f.keys, &NoRevocations, &[unbound]).unwrap_err();
    assert_eq!(e.kind, DeniedKind::DischargeUnbound);
    let e = verify(&token, &request(), &f.keys, &NoRevocations, &[]).unwrap_err();
    assert_eq!(e.kind, DeniedKind::DischargeMissing);
    let grep = Request {
        tool_name: "grep",
        ..request()
    };
    let e = verify(&token, &grep, &f.keys, &NoRevocations, &[bound]).unwrap_err();
    assert_eq!(e.caveat.as_deref(), Some("tool-name = wc"));
    // Attenuating a pymacaroons token here keeps it valid.
    let child = token.attenuate(&caveats(&["fuel <= 5"])).unwrap();
    let bound_child = child.bind(&Discharge::decode(lines[2]).unwrap()).unwrap();
    let ok = verify(&child, &request(), &f.keys, &NoRevocations, &[bound_child]).unwrap();
    assert_eq!(ok.budget.fuel, 5);
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
