//! voidbox-sandbox (being written).
