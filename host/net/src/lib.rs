//! voidbox-net: the TCP transport between Voidbox replicas and clients.
//!
//! It moves opaque frames and knows nothing of PBFT, WebAssembly or the
//! host: what a frame means is the caller's business.
