//! HTTP endpoints under `/v1`, wire-compatible with CodeProject.AI Server 2.9
//! (docs/protocol.md §1–§2), plus modhost's jobs (§4).
//!
//! Layout:
//! - `module_side`: what modules call: long-poll queue, replies, status,
//!   progress pushes, logs;
//! - `info`: server status, module lists and the log for the explorer and
//!   dashboard;
//! - `settings`: start, stop, restart and per-module setting overrides;
//! - `jobs`: the jobs API and its event streams;
//! - `openai`, `ollama`: the OpenAI- and Ollama-compatible APIs over the
//!   modules' generation routes (`crate::generation`); Ollama's sit under
//!   `/api`, outside `/v1`;
//! - `skills`, `documents`: WebAssembly skills and the document index they
//!   search (crate `modhost-skills`);
//! - `client`: the catch-all `POST /v1/{route}` that turns requests into commands.
//!
//! Order matters: the specific routes are registered before the catch-all, so
//! they take precedence over a module route of the same path.

mod client;
mod documents;
mod info;
mod jobs;
mod module_side;
pub(crate) mod ollama;
pub(crate) mod openai;
mod settings;
mod skills;

use actix_web::web;

/// Registers every `/v1` endpoint, and Ollama's `/api`, on `cfg`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(ollama::configure).service(
        web::scope("/v1")
            .configure(module_side::configure)
            .configure(info::configure)
            .configure(settings::configure)
            .configure(jobs::configure)
            .configure(openai::configure)
            .configure(skills::configure)
            .configure(documents::configure)
            .configure(client::configure),
    );
}

/// Registers only what modules call, for the modules' own listener.
pub fn configure_module_side(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope("/v1").configure(module_side::configure));
}
