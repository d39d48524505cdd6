//! voidbox-guest (being written).
