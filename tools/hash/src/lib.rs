//! `hash`: SHA-256 and BLAKE3 digests of the input or of a granted blob.
//!
//! Input: any bytes. Arguments: `algo` (`sha256`, `blake3` or `all`, the
//! default), `blob` (a digest `blake3:<64 hex>` that the invocation grants:
//! hash that blob instead of the input).
//!
//! Output: compact JSON with the lowercase hex digests asked for and the
//! number of bytes hashed, in this order: `{"sha256":"…","blake3":"…","bytes":N}`
//! (`algo=sha256` leaves out `blake3` and the other way round). A blob that
//! cannot be read is the tool error with the SDK's blob codes
//! (`blob-not-granted`, `blob-not-found`, `blob-too-large`, `bad-digest`).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use voidbox_guest::{Args, Json, Tool, ToolError, ToolInfo};

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// The digests of `data` for `algo` (`sha256`, `blake3` or `all`).
pub fn digests(data: &[u8], algo: &str) -> Result<Value, ToolError> {
    let (sha, blake) = match algo {
        "all" => (true, true),
        "sha256" => (true, false),
        "blake3" => (false, true),
        other => {
            return Err(ToolError::bad_arg(
                "algo",
                format!("`{other}` is not sha256, blake3 or all"),
            ));
        }
    };
    let mut out = Map::new();
    if sha {
        out.insert("sha256".into(), hex(&Sha256::digest(data)).into());
    }
    if blake {
        out.insert("blake3".into(), blake3::hash(data).to_hex().as_str().into());
    }
    out.insert("bytes".into(), (data.len() as u64).into());
    Ok(Value::Object(out))
}

const OUTPUT_SCHEMA: &str = r#"{"type":"object","properties":{"sha256":{"type":"string","pattern":"^[0-9a-f]{64}$"},"blake3":{"type":"string","pattern":"^[0-9a-f]{64}$"},"bytes":{"type":"integer","minimum":0}},"required":["bytes"]}"#;

struct Hash;

impl Tool for Hash {
    type Input = Vec<u8>;
    type Output = Json<Value>;

    fn describe() -> ToolInfo {
        voidbox_guest::tool_info!().output_schema(OUTPUT_SCHEMA)
    }

    fn invoke(input: Vec<u8>, args: &Args) -> Result<Json<Value>, ToolError> {
        args.reject_unknown(&["algo", "blob"])?;
        let data = match args.get("blob") {
            Some(digest) => voidbox_guest::read_blob(digest)?,
            None => input,
        };
        digests(&data, args.get("algo").unwrap_or("all")).map(Json)
    }
}

voidbox_guest::export_tool!(Hash);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        let out = digests(b"abc", "all").unwrap().to_string();
        assert_eq!(
            out,
            concat!(
                r#"{"sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","#,
                r#""blake3":"6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85","bytes":3}"#
            )
        );
        let sha_only = digests(b"", "sha256").unwrap().to_string();
        assert_eq!(
            sha_only,
            r#"{"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","bytes":0}"#
        );
        assert_eq!(digests(b"", "md5").unwrap_err().code(), "bad-arg");
    }
}
