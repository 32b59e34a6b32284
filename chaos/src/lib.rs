//! chatlog chaos harness (being built).
