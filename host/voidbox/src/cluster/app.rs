//! The replicated application: what a replica does with each committed
//! batch. It knows the host and the operation format, not sockets or the
//! protocol's messages beyond the batch it is handed.
//!
//! Every decision that must agree across replicas is taken here from
//! replicated inputs only: the consensus time of the batch (capability
//! expiry, the guest's clock) and the use counters kept in [`AppState`]
//! (not in the host's own database, which a replica's crash could leave a
//! step ahead of its protocol log). The receipts themselves live in the
//! host's stores; running a batch twice after a restart hits the action
//! cache and yields the same receipt.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use voidbox_auth::{NoRevocations, StoreError, TakeError, TokenId, UseCounter};
use voidbox_pbft::{Execute, Hlc, Request};

use super::wire::{Op, OpResult, INLINE_OUTPUT_MAX};
use crate::{Digest, Error, Host, Store};

/// The replicated state besides receipts: what the checkpoint digest
/// covers. Its encoding is canonical (a `BTreeMap`, fixed field order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    /// Requests executed since genesis.
    pub executed: u64,
    /// blake3 chain over every result: `chain = H(chain || H(result))`, so
    /// two replicas with equal chains returned the same results.
    pub chain: [u8; 32],
    /// Uses taken per limited-use token id.
    pub uses: BTreeMap<String, u64>,
}

impl AppState {
    /// The canonical snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("state serializes")
    }

    /// A state from a snapshot; `None` is the initial state.
    pub fn restore(snapshot: Option<&[u8]>) -> Result<AppState, String> {
        match snapshot {
            None => Ok(AppState::default()),
            Some(b) => match postcard::take_from_bytes::<AppState>(b) {
                Ok((s, [])) => Ok(s),
                _ => Err("the checkpoint's snapshot is not an application state".into()),
            },
        }
    }

    fn record(&mut self, result: &[u8]) {
        let mut h = blake3::Hasher::new();
        h.update(b"voidbox-cluster-chain-v1");
        h.update(&self.chain);
        h.update(blake3::hash(result).as_bytes());
        self.chain = *h.finalize().as_bytes();
        self.executed += 1;
    }
}

/// Use counting over the replicated map (one thread executes batches, so
/// the atomicity `UseCounter` asks for is trivial).
struct Uses<'a>(RefCell<&'a mut BTreeMap<String, u64>>);

impl UseCounter for Uses<'_> {
    fn try_take(&self, id: &TokenId, limit: u64) -> Result<u64, TakeError> {
        let mut map = self.0.borrow_mut();
        let used = map.get(&id.to_string()).copied().unwrap_or(0);
        if used >= limit {
            return Err(TakeError::Exhausted { used, limit });
        }
        map.insert(id.to_string(), used + 1);
        Ok(used + 1)
    }

    fn used(&self, id: &TokenId) -> Result<u64, StoreError> {
        Ok(self.0.borrow().get(&id.to_string()).copied().unwrap_or(0))
    }
}

/// Fetches a blob the replica lacks from its peers (checked by digest).
pub type Fetch = Box<dyn Fn(Digest) -> Option<Vec<u8>> + Send>;

/// A replica's application.
pub struct App {
    host: Arc<Host>,
    state: AppState,
    fetch: Fetch,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("state", &self.state).finish()
    }
}

impl App {
    /// An application over `host`, fetching missing blobs with `fetch`.
    pub fn new(host: Arc<Host>, fetch: Fetch) -> App {
        App {
            host,
            state: AppState::default(),
            fetch,
        }
    }

    /// The replicated state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Replaces the state (recovery, state transfer).
    pub fn restore(&mut self, snapshot: Option<&[u8]>) -> Result<(), String> {
        self.state = AppState::restore(snapshot)?;
        Ok(())
    }

    /// Runs a committed batch; one result per request, in order.
    pub fn execute(&mut self, batch: &Execute) -> Vec<Vec<u8>> {
        let mut results = Vec::with_capacity(batch.requests.len());
        for request in &batch.requests {
            let result = self.run(request, batch.hlc).encode();
            self.state.record(&result);
            results.push(result);
        }
        results
    }

    fn run(&mut self, request: &Request, hlc: Hlc) -> OpResult {
        let op = match Op::decode(&request.operation) {
            Ok(op) => op,
            Err(message) => return OpResult::Failed { message },
        };
        match op {
            Op::Invoke { token, invocation } => self.invoke(&token, invocation, hlc),
        }
    }

    fn invoke(&mut self, token: &str, mut invocation: crate::Invocation, hlc: Hlc) -> OpResult {
        // The guest's clock is the consensus time, so every replica runs
        // the same invocation (and the digest says when it ran).
        invocation.time_unix_ns = hlc.physical_us.saturating_mul(1_000);
        let failed = |e: Error| OpResult::Failed {
            message: e.to_string(),
        };
        if let Err(e) = self.ensure_tool(invocation.tool) {
            return failed(e);
        }
        let input_bytes = match self.ensure_blob(invocation.input) {
            Ok(n) => n,
            Err(e) => return failed(e),
        };
        for g in invocation.grants.clone() {
            if let Err(e) = self.ensure_blob(g) {
                return failed(e);
            }
        }
        let now_unix = hlc.physical_us / 1_000_000;
        // Revocation is not replicated yet: a replica's local revocation
        // list would make replicas disagree, so none is consulted.
        let (authorized, effective) =
            match self
                .host
                .authorize_at(token, &invocation, input_bytes, now_unix, &NoRevocations)
            {
                Ok(a) => a,
                Err(Error::Denied(d)) => {
                    return OpResult::Denied {
                        kind: d.kind.as_str().to_string(),
                        message: d.message,
                    }
                }
                Err(Error::NotAdmitted(m)) => {
                    return OpResult::Denied {
                        kind: "not-admitted".into(),
                        message: m,
                    }
                }
                Err(e) => return failed(e),
            };
        if let Err(d) = authorized.take_use(&Uses(RefCell::new(&mut self.state.uses))) {
            return OpResult::Denied {
                kind: d.kind.as_str().to_string(),
                message: d.message,
            };
        }
        let mut receipt = match self.host.invoke(&effective) {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let output = if receipt.output_bytes <= INLINE_OUTPUT_MAX {
            match self.host.output(&receipt) {
                Ok(o) => o,
                Err(e) => return failed(e),
            }
        } else {
            None
        };
        receipt.cached = false;
        receipt.duration_us = 0;
        receipt.timestamp = invocation.time_unix_ns;
        OpResult::Receipt {
            receipt: Box::new(receipt),
            output,
        }
    }

    fn ensure_tool(&self, digest: Digest) -> crate::Result<()> {
        match self.host.tool(&digest.to_string()) {
            Ok(_) => Ok(()),
            Err(Error::NoSuchTool(_)) => {
                let wasm = self.fetched(digest)?;
                self.host.add_tool(&wasm, None).map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Makes sure a blob is stored; returns its size.
    fn ensure_blob(&self, digest: Digest) -> crate::Result<u64> {
        if let Some(n) = self.host.blobs().size(&digest)? {
            return Ok(n);
        }
        let bytes = self.fetched(digest)?;
        self.host.put_input(&bytes)?;
        Ok(bytes.len() as u64)
    }

    fn fetched(&self, digest: Digest) -> crate::Result<Vec<u8>> {
        match (self.fetch)(digest) {
            Some(b) if Digest::of(&b) == digest => Ok(b),
            _ => Err(Error::Cluster(format!(
                "no replica has {digest}; put it with `voidbox cas put --cluster` (or `tool add --cluster`) first"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_canonical_and_chain_every_result() {
        let mut a = AppState::default();
        a.uses.insert("b".into(), 2);
        a.uses.insert("a".into(), 1);
        let mut b = AppState::default();
        b.uses.insert("a".into(), 1);
        b.uses.insert("b".into(), 2);
        assert_eq!(
            a.snapshot(),
            b.snapshot(),
            "insertion order does not matter"
        );
        a.record(b"r1");
        b.record(b"r2");
        assert_ne!(a.chain, b.chain);
        assert_eq!(AppState::restore(Some(&a.snapshot())).unwrap(), a);
        assert_eq!(AppState::restore(None).unwrap(), AppState::default());
        assert!(AppState::restore(Some(b"\xff\xff\xff")).is_err());
    }

    #[test]
    fn uses_are_counted_in_the_replicated_map() {
        let mut map = BTreeMap::new();
        let id: TokenId = "owner:000102030405060708090a0b0c0d0e0f"
            .parse()
            .expect("a token id");
        let uses = Uses(RefCell::new(&mut map));
        assert_eq!(uses.try_take(&id, 2).unwrap(), 1);
        assert_eq!(uses.try_take(&id, 2).unwrap(), 2);
        assert!(matches!(
            uses.try_take(&id, 2),
            Err(TakeError::Exhausted { used: 2, limit: 2 })
        ));
        assert_eq!(map.len(), 1);
    }
}
