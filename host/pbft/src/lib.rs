//! voidbox-pbft (being written).
