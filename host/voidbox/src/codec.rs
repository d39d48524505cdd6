//! The binary forms of invocations and receipts: what the storage journal
//! writes for them, and what a cluster's ordered operations and results
//! carry (`cluster::wire`). One encoding for both, so a receipt crosses
//! from the wire to the journal without a second format to keep in step.
//!
//! ```text
//! invocation = tool[32] | export str | input[32] | args: len u32 (str str)*
//!            | fuel u64 | memory u64 | output u64 | timeout_ms u64
//!            | grants: len u32 digest[32]* | time_unix_ns u64
//! receipt    = receipt[32] | invocation[32] | tool[32] | input[32]
//!            | output opt | output_bytes u64 | outcome str | fuel_used u64
//!            | memory_peak u64 | diagnostics opt | timestamp u64
//!            | cached u8 | duration_us u64
//! str        = len u32 | utf-8 bytes        opt = 0 | 1 digest[32]
//! ```
//!
//! Integers are little-endian and fixed-width (cheaper to write and read
//! than varints, and these forms are not hashed). The outcome is its
//! canonical JSON, empty for `ok`. This module knows the bytes only.

use std::time::Duration;

use voidbox_cas::Digest;
use voidbox_sandbox::{Budget, Outcome};

use crate::invocation::{put_opt_digest, Invocation, Receipt};

pub(crate) fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(
        &u32::try_from(len)
            .expect("record fits in u32")
            .to_le_bytes(),
    );
}

/// Writes the length of what was appended since `at`, where a
/// [`put_len`] of 0 reserved its place.
pub(crate) fn patch_len(out: &mut [u8], at: usize) {
    let len = out.len() - at - 4;
    out[at..at + 4].copy_from_slice(&u32::try_from(len).expect("fits").to_le_bytes());
}

/// A flag byte, then the length and the bytes if there are any.
pub(crate) fn put_opt_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            out.push(1);
            put_len(out, b.len());
            out.extend_from_slice(b);
        }
        None => out.push(0),
    }
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn encode_invocation(out: &mut Vec<u8>, i: &Invocation) {
    out.extend_from_slice(i.tool.as_bytes());
    put_str(out, &i.export);
    out.extend_from_slice(i.input.as_bytes());
    put_len(out, i.args.len());
    for (k, v) in &i.args {
        put_str(out, k);
        put_str(out, v);
    }
    put_u64(out, i.budget.fuel);
    put_u64(out, i.budget.memory_bytes);
    put_u64(out, i.budget.output_bytes);
    put_u64(
        out,
        i.budget.timeout.as_millis().try_into().unwrap_or(u64::MAX),
    );
    put_len(out, i.grants.len());
    for g in &i.grants {
        out.extend_from_slice(g.as_bytes());
    }
    put_u64(out, i.time_unix_ns);
}

pub(crate) fn encode_receipt(out: &mut Vec<u8>, r: &Receipt) {
    out.extend_from_slice(r.receipt.as_bytes());
    out.extend_from_slice(r.invocation.as_bytes());
    out.extend_from_slice(r.tool.as_bytes());
    out.extend_from_slice(r.input.as_bytes());
    put_opt_digest(out, &r.output);
    put_u64(out, r.output_bytes);
    let json = crate::invocation::outcome_json(&r.outcome);
    put_len(out, json.len());
    out.extend_from_slice(&json);
    put_u64(out, r.fuel_used);
    put_u64(out, r.memory_peak_bytes);
    put_opt_digest(out, &r.diagnostics);
    put_u64(out, r.timestamp);
    out.push(u8::from(r.cached));
    put_u64(out, r.duration_us);
}

/// Reads the forms above from the front of a byte slice; every read that
/// runs past the end is an error, never a panic.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("record ends early".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn len(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    pub(crate) fn digest(&mut self) -> Result<Digest, String> {
        Ok(Digest(self.take(32)?.try_into().expect("32 bytes")))
    }

    pub(crate) fn opt_digest(&mut self) -> Result<Option<Digest>, String> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.digest()?)),
            t => Err(format!("bad option tag {t}")),
        }
    }

    /// [`put_opt_bytes`]'s form.
    pub(crate) fn opt_bytes(&mut self) -> Result<Option<&'a [u8]>, String> {
        match self.u8()? {
            0 => Ok(None),
            1 => {
                let n = self.len()?;
                Ok(Some(self.take(n)?))
            }
            t => Err(format!("bad option tag {t}")),
        }
    }

    pub(crate) fn string(&mut self) -> Result<String, String> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| e.to_string())
    }

    pub(crate) fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("{} unexpected bytes after a record", self.0.len()))
        }
    }
}

pub(crate) fn decode_invocation(bytes: &[u8]) -> Result<Invocation, String> {
    let mut r = Reader(bytes);
    let tool = r.digest()?;
    let export = r.string()?;
    let input = r.digest()?;
    let n = r.len()?;
    let mut args = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        args.push((r.string()?, r.string()?));
    }
    let budget = Budget {
        fuel: r.u64()?,
        memory_bytes: r.u64()?,
        output_bytes: r.u64()?,
        timeout: Duration::from_millis(r.u64()?),
    };
    let n = r.len()?;
    let mut grants = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        grants.push(r.digest()?);
    }
    let time_unix_ns = r.u64()?;
    r.end()?;
    Ok(Invocation {
        tool,
        export,
        input,
        args,
        budget,
        grants,
        time_unix_ns,
    })
}

/// A receipt's fields, without the check of its digest (the journal's
/// `decode_receipt` adds that check).
pub(crate) fn decode_receipt_fields(bytes: &[u8]) -> Result<Receipt, String> {
    let mut r = Reader(bytes);
    let receipt = r.digest()?;
    let invocation = r.digest()?;
    let tool = r.digest()?;
    let input = r.digest()?;
    let output = r.opt_digest()?;
    let output_bytes = r.u64()?;
    let n = r.len()?;
    let outcome = if n == 0 {
        Outcome::Ok
    } else {
        serde_json::from_slice(r.take(n)?).map_err(|e| format!("outcome: {e}"))?
    };
    let out = Receipt {
        receipt,
        invocation,
        tool,
        input,
        output,
        output_bytes,
        outcome,
        fuel_used: r.u64()?,
        memory_peak_bytes: r.u64()?,
        diagnostics: r.opt_digest()?,
        timestamp: r.u64()?,
        cached: r.u8()? != 0,
        duration_us: r.u64()?,
    };
    r.end()?;
    Ok(out)
}
