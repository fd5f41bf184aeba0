//! HTTP endpoints under `/v1`, wire-compatible with CodeProject.AI Server 2.9
//! (reference/codeproject-protocol.md §1-2).
//!
//! Layout:
//! - `module_side`: what modules call: long-poll queue, replies, status, logs;
//! - `info`: server status, module lists and settings for the explorer and dashboard;
//! - `client`: the catch-all `POST /v1/{route}` that turns requests into commands.
//!
//! Order matters: the specific routes are registered before the catch-all.

mod client;
mod info;
mod module_side;

use actix_web::web;

/// Registers every `/v1` endpoint on `cfg`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .configure(module_side::configure)
            .configure(info::configure)
            .configure(client::configure),
    );
}
