//! The first frame on every connection: who is dialing.
//!
//! Layout: the magic `voidbox-net/1` (protocol name and version), one kind
//! byte, then for a replica its id as `u32` big-endian. Anything else is
//! refused, so a stray connection (an HTTP client, an older version, a port
//! scanner) fails clearly instead of being read as frames.

/// Protocol name and version at the start of every hello.
pub const HELLO_MAGIC: &[u8] = b"voidbox-net/1";

/// The largest hello frame a node reads; a longer one is refused unread.
pub const HELLO_BYTES_MAX: usize = 64;

const KIND_REPLICA: u8 = b'R';
const KIND_CLIENT: u8 = b'C';

/// What a dialer says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hello {
    /// A replica opening its outbound link; frames that follow come from it.
    Replica(u32),
    /// A client; the node answers on the same connection.
    Client,
}

/// Why a hello frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelloError {
    /// The frame does not start with [`HELLO_MAGIC`].
    #[error(
        "not a voidbox-net/1 hello: the dialer speaks another protocol or another version of \
         this one"
    )]
    BadMagic,
    /// The kind byte is neither replica nor client.
    #[error("hello kind byte {0:#04x} is neither replica (R) nor client (C)")]
    UnknownKind(u8),
    /// The frame has the wrong length for its kind.
    #[error("hello of kind {kind:?} has {len} bytes after the magic; expected {want}")]
    BadLength {
        /// The kind byte, as a character.
        kind: char,
        /// Bytes after the magic.
        len: usize,
        /// Bytes this kind needs after the magic.
        want: usize,
    },
}

impl Hello {
    /// The hello frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = HELLO_MAGIC.to_vec();
        match self {
            Hello::Replica(id) => {
                out.push(KIND_REPLICA);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Hello::Client => out.push(KIND_CLIENT),
        }
        out
    }

    /// Parses a hello frame.
    pub fn decode(frame: &[u8]) -> Result<Hello, HelloError> {
        let rest = frame
            .strip_prefix(HELLO_MAGIC)
            .ok_or(HelloError::BadMagic)?;
        let (&kind, body) = rest.split_first().ok_or(HelloError::BadLength {
            kind: '?',
            len: 0,
            want: 1,
        })?;
        let want = match kind {
            KIND_REPLICA => 4,
            KIND_CLIENT => 0,
            other => return Err(HelloError::UnknownKind(other)),
        };
        if body.len() != want {
            return Err(HelloError::BadLength {
                kind: char::from(kind),
                len: rest.len(),
                want: want + 1,
            });
        }
        Ok(match kind {
            KIND_REPLICA => {
                Hello::Replica(u32::from_be_bytes([body[0], body[1], body[2], body[3]]))
            }
            _ => Hello::Client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_round_trip() {
        for hello in [Hello::Client, Hello::Replica(0), Hello::Replica(u32::MAX)] {
            assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
            assert!(hello.encode().len() <= HELLO_BYTES_MAX);
        }
    }

    #[test]
    fn garbage_is_refused_with_the_reason() {
        assert_eq!(Hello::decode(b"GET / HTTP/1.1"), Err(HelloError::BadMagic));
        assert_eq!(Hello::decode(b""), Err(HelloError::BadMagic));
        assert!(matches!(
            Hello::decode(HELLO_MAGIC),
            Err(HelloError::BadLength { .. })
        ));
        let mut wrong_kind = HELLO_MAGIC.to_vec();
        wrong_kind.push(b'X');
        assert_eq!(
            Hello::decode(&wrong_kind),
            Err(HelloError::UnknownKind(b'X'))
        );
        let mut short_replica = HELLO_MAGIC.to_vec();
        short_replica.extend_from_slice(b"R\0\0");
        assert_eq!(
            Hello::decode(&short_replica),
            Err(HelloError::BadLength {
                kind: 'R',
                len: 3,
                want: 5
            })
        );
        let mut long_client = Hello::Client.encode();
        long_client.push(0);
        assert!(matches!(
            Hello::decode(&long_client),
            Err(HelloError::BadLength { kind: 'C', .. })
        ));
    }
}
