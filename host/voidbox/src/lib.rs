//! voidbox (being written).
