//! voidbox-auth (being written).
