//! chatlog producer (being built).
#![forbid(unsafe_code)]
