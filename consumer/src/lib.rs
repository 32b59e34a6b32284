//! chatlog consumer (being built).
#![forbid(unsafe_code)]
