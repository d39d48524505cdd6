//! voidbox-ising (being written).
