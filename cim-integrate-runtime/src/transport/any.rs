//! Transport chosen at run time (being written).
