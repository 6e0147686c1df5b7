//! Domain events (being written).
