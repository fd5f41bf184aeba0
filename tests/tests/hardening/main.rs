//! Hardening: no request can freeze, exhaust or impersonate; modules never
//! outlive the server; API keys and origins (docs/security.md).
//!
//! HTTP behaviour runs the server in-process (`InProcess`); what concerns
//! processes, signals and sockets runs the real binary (`Server`). Modules
//! are `sleep` processes the test plays, through the port, queue name and
//! token the server gave them, or the Rust SDK's echo example.
//!
//! `fake.rs` holds the Fake module the tests play; the tests are grouped by
//! what they harden: request bodies, memory and disk (`limits.rs`), who may
//! act as a module (`tokens.rs`), module processes, and security.

mod bodies;
mod fake;
mod limits;
mod processes;
mod security;
mod tokens;
