//! The web UI in `explorer/`, embedded in the binary and served at `/`.
//!
//! Every build carries the files inside the binary (rust-embed's
//! `debug-embed`), so the tests serve exactly what ships; a UI edit shows
//! after `cargo build`.
//!
//! CodeProject's module pages, opened on their own, load the server's
//! `/assets/server.js`, `/assets/explorer.js` and stylesheets; modhost has
//! its own counterparts at those paths (docs/protocol.md §2.6), and serves
//! its `server.css` for the stylesheet names they use ([`STYLE_ALIASES`]).

use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "../explorer/"]
struct Assets;

/// Serves the UI for every path no `/v1` endpoint takes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // A default service sees every method (its route's guards do not apply),
    // so `serve` refuses the ones that do not read.
    cfg.default_service(web::to(serve));
}

/// Stylesheets CodeProject's module pages load, answered with modhost's
/// `assets/server.css`.
const STYLE_ALIASES: &[&str] = &[
    "assets/bootstrap-dark.min.css",
    "assets/bootstrap.min.css",
    "assets/dashboard.css",
];

async fn serve(req: HttpRequest) -> HttpResponse {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, "GET, HEAD"))
            .json(crate::error::failure_body(
                405,
                &format!(
                    "{} is not allowed on {}: the web UI takes GET and HEAD",
                    req.method(),
                    req.path()
                ),
            ));
    }
    let path = req.path().trim_start_matches('/');
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else if STYLE_ALIASES.contains(&path) {
        "assets/server.css".to_owned()
    } else {
        path.to_owned()
    };
    match Assets::get(&path).or_else(|| Assets::get(&format!("{path}.html"))) {
        Some(file) => HttpResponse::Ok()
            .content_type(file.metadata.mimetype())
            .body(file.data.into_owned()),
        None => HttpResponse::NotFound().json(crate::error::failure_body(
            404,
            &format!("no page at /{path}"),
        )),
    }
}
