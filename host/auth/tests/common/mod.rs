//! Shared fixtures for the integration tests.
#![allow(dead_code)]

use voidbox_auth::*;

pub const NOW: u64 = 1_800_000_000;

pub fn digest(byte: u8) -> Digest {
    Digest([byte; 32])
}

/// A deterministic entropy source, so failures replay.
pub fn seeded(seed: u64) -> impl FnMut(&mut [u8]) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move |buf: &mut [u8]| {
        for b in buf {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            *b = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8;
        }
    }
}

pub struct Fixture {
    pub keys: MemoryKeyStore,
    pub key_id: KeyId,
    pub root: RootKey,
}

impl Fixture {
    pub fn new() -> Fixture {
        let keys = MemoryKeyStore::new();
        let key_id = KeyId::new("tenant-a").unwrap();
        let root = RootKey::generate(&mut seeded(1));
        keys.insert(key_id.clone(), root.clone());
        Fixture { keys, key_id, root }
    }

    pub fn mint(&self, caveats: &[&str]) -> Token {
        let caveats: Vec<Caveat> = caveats.iter().map(|c| c.parse().unwrap()).collect();
        Token::mint(&self.key_id, &self.root, &caveats, &mut OsEntropy).unwrap()
    }

    pub fn verify(&self, token: &Token, request: &Request<'_>) -> Result<Authorized, Denied> {
        verify(token, request, &self.keys, &NoRevocations, &[])
    }
}

pub fn request() -> Request<'static> {
    Request {
        tool_digest: digest(7),
        tool_name: "wc",
        now_unix: NOW,
        budget: Budget::UNLIMITED,
        input_bytes: 100,
        reads: &[],
    }
}

pub fn caveats(texts: &[&str]) -> Vec<Caveat> {
    texts.iter().map(|c| c.parse().unwrap()).collect()
}
