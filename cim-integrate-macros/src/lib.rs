//! macros (being written)
