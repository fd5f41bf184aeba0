//! The web UI in `explorer/`, embedded in the binary and served at `/`.
//!
//! In debug builds rust-embed reads the files from disk, so UI edits show on
//! reload; release builds carry them inside the binary.

use actix_web::{web, HttpRequest, HttpResponse};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "../explorer/"]
struct Assets;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.default_service(web::get().to(serve));
}

async fn serve(req: HttpRequest) -> HttpResponse {
    let path = req.path().trim_start_matches('/');
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
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
