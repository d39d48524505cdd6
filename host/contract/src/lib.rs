//! voidbox-contract (being written).
