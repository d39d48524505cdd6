//! voidbox-cas (being written).
