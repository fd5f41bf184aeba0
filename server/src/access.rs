//! Who may call what (docs/security.md): one middleware in front of every
//! route.
//!
//! Routes fall in four classes:
//! - **module** routes (`/v1/queue/…`, `POST /v1/log`): authenticated by the
//!   module's launch token in their handlers, never by the client key;
//! - **admin** routes (`POST /v1/server/settings/…`, `POST /v1/jobs/{id}/cancel`,
//!   `PUT` and `DELETE /v1/documents/…`): change what runs, or stored data. They need the API key when one is set; without a key
//!   they are served to this machine only. Requests from a browser page of
//!   another origin are refused unless the origin is allowed, so that a page
//!   the user visits cannot stop modules with a form POST;
//! - **client** routes (the rest of `/v1`): need the API key when one is set;
//!   permissive CORS (`Access-Control-Allow-Origin: *`), as CodeProject's
//!   pages and clients rely on it; admin routes name only an allowed origin;
//! - the **web UI**'s files: always served; the pages ask for the key.
//!
//! The key travels as `Authorization: Bearer <key>` or `X-API-Key: <key>`; a
//! `GET` of an event stream may carry it as `?api_key=`, since a browser's
//! `EventSource` cannot send headers.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, ResponseError};

use crate::error::ApiError;
use crate::registry::constant_time_eq;
use crate::AppState;

/// What a route is, for access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    Module,
    Admin,
    Client,
    WebUi,
}

/// The class of `method path`.
pub fn classify(method: &Method, path: &str) -> RouteClass {
    let lower = path.to_ascii_lowercase();
    let Some(api) = lower.strip_prefix("/v1/") else {
        // Ollama's API (`/api/...`) is a client route like CodeProject's.
        return if lower == "/v1" || lower == "/api" || lower.starts_with("/api/") {
            RouteClass::Client
        } else {
            RouteClass::WebUi
        };
    };
    if api.starts_with("queue/") || (method == Method::POST && (api == "log" || api == "log/")) {
        return RouteClass::Module;
    }
    // A pre-flight is classed as the POST it asks about.
    let admin = (method == Method::POST || method == Method::OPTIONS)
        && (api.starts_with("server/settings")
            || (api.starts_with("jobs/") && api.ends_with("/cancel")));
    // Writing the document index changes what every skill reads.
    let writes_documents = api.starts_with("documents/")
        && (method == Method::PUT
            || method == Method::DELETE
            || (method == Method::OPTIONS && !api.ends_with("/search")));
    if admin || writes_documents {
        RouteClass::Admin
    } else {
        RouteClass::Client
    }
}

/// The headers CORS pre-flight answers allow.
const ALLOWED_HEADERS: &str = "Authorization, X-API-Key, Content-Type, Last-Event-ID, Accept";

/// The middleware: CORS pre-flight, API key, origin check.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let class = classify(req.method(), req.path());
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    if req.method() == Method::OPTIONS && class != RouteClass::WebUi {
        let response = preflight(&state, &req, class);
        return Ok(req.into_response(response).map_into_right_body());
    }
    // The answer itself names who may read it too, not only the pre-flight:
    // a page's simple request (a multipart POST, a GET) has none.
    let allow = match class {
        RouteClass::Client | RouteClass::Admin if req.headers().contains_key(header::ORIGIN) => {
            allowed_origin(&state, &req, class)
        }
        _ => None,
    };
    let mut response = match check(&state, &req, class) {
        Err(err) => {
            let response = shaped(req.path(), err);
            req.into_response(response).map_into_right_body()
        }
        Ok(()) => next.call(req).await?.map_into_left_body(),
    };
    if let Some(origin) = allow {
        if let Ok(value) = header::HeaderValue::from_str(&origin) {
            let headers = response.headers_mut();
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
            if origin != "*" {
                headers.append(header::VARY, header::HeaderValue::from_static("Origin"));
            }
        }
    }
    Ok(response)
}

/// A refusal in the shape the route's API answers errors in: OpenAI's on
/// its routes, Ollama's under `/api`, CodeProject's elsewhere.
fn shaped(path: &str, err: ApiError) -> HttpResponse {
    let lower = path.to_ascii_lowercase();
    let openai = [
        "/v1/chat/",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
    ]
    .iter()
    .any(|p| lower.starts_with(p));
    match err {
        ApiError::Unauthorized(message) if openai => {
            crate::api::openai::OpenAiError::unauthorized(message).response()
        }
        ApiError::Unauthorized(message) if lower.starts_with("/api/") => {
            crate::api::ollama::OllamaError::unauthorized(message).error_response()
        }
        err => err.error_response(),
    }
}

/// The `Access-Control-Allow-Origin` for a request of `class`: `*` for
/// client routes; for admin routes the request's own origin when it is
/// allowed, else none.
fn allowed_origin(state: &AppState, req: &ServiceRequest, class: RouteClass) -> Option<String> {
    match class {
        RouteClass::Admin => match origin_allowed(state, req) {
            Ok(()) => req
                .headers()
                .get(header::ORIGIN)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            Err(_) => None,
        },
        _ => Some("*".to_owned()),
    }
}

/// Whether `req` may use a route of `class`.
///
/// # Errors
/// 401 without the right key; 403 for an admin request from a refused
/// origin, or from another machine when no key is set.
fn check(state: &AppState, req: &ServiceRequest, class: RouteClass) -> Result<(), ApiError> {
    match class {
        RouteClass::Module | RouteClass::WebUi => Ok(()),
        RouteClass::Client => check_key(state, req),
        RouteClass::Admin => {
            check_key(state, req)?;
            check_origin(state, req)?;
            let local = req.peer_addr().is_some_and(|a| a.ip().is_loopback());
            if state.config.api_key.is_none() && !local {
                return Err(ApiError::Forbidden(
                    "starting, stopping and configuring modules from another machine needs an \
                     API key: set api_key (or MODHOST_API_KEY) on the server"
                        .into(),
                ));
            }
            Ok(())
        }
    }
}

/// The key `req` carries, if any.
fn presented_key(req: &ServiceRequest) -> Option<String> {
    let headers = req.headers();
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    {
        return Some(bearer.trim().to_owned());
    }
    if let Some(key) = headers.get("X-API-Key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim().to_owned());
    }
    let path = req.path().to_ascii_lowercase();
    if req.method() == Method::GET && path.starts_with("/v1/jobs/") && path.ends_with("/events") {
        return web::Query::<std::collections::HashMap<String, String>>::from_query(
            req.query_string(),
        )
        .ok()
        .and_then(|q| q.get("api_key").cloned());
    }
    None
}

/// # Errors
/// 401 when a key is set and `req` lacks it or has another.
fn check_key(state: &AppState, req: &ServiceRequest) -> Result<(), ApiError> {
    let Some(expected) = state.config.api_key.as_deref() else {
        return Ok(());
    };
    match presented_key(req) {
        Some(given) if constant_time_eq(&given, expected) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized("the API key is not valid".into())),
        None => Err(ApiError::Unauthorized(
            "this server needs an API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
                .into(),
        )),
    }
}

/// Whether a browser request's `Origin` is the server's own page or an
/// allowed one; the refused origin otherwise. Requests without `Origin` are
/// not from a web page.
///
/// The server's own page is `http(s)://<Host>`. To keep a page from another
/// site that rebinds its DNS name to this machine from passing as that, a
/// `Host` that is a DNS name counts only when it is `localhost` or an API
/// key is set (which such a page cannot know); an IP address cannot be
/// rebound.
fn origin_allowed(state: &AppState, req: &ServiceRequest) -> Result<(), String> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(()); // not a browser page: curl, scripts, SDKs
    };
    let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let hostname = host
        .rsplit_once(':')
        .filter(|(_, port)| port.parse::<u16>().is_ok())
        .map_or(host, |(name, _)| name);
    let trusted_host = state.config.api_key.is_some()
        || hostname.eq_ignore_ascii_case("localhost")
        || hostname
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok();
    let own = [format!("http://{host}"), format!("https://{host}")];
    if (trusted_host && own.iter().any(|o| o.eq_ignore_ascii_case(origin)))
        || state
            .config
            .allowed_origins
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        Ok(())
    } else {
        Err(origin.to_owned())
    }
}

/// # Errors
/// 403 naming the origin and the setting that would allow it.
fn check_origin(state: &AppState, req: &ServiceRequest) -> Result<(), ApiError> {
    origin_allowed(state, req).map_err(|origin| {
        ApiError::Forbidden(format!(
            "a page from {origin} may not change this server's modules; add it to \
             allowed_origins (MODHOST_ALLOWED_ORIGINS) if it should"
        ))
    })
}

/// The answer to a CORS pre-flight: client routes from any origin; admin
/// routes only from allowed origins.
fn preflight(state: &AppState, req: &ServiceRequest, class: RouteClass) -> HttpResponse {
    let mut response = HttpResponse::NoContent();
    if let Some(origin) = allowed_origin(state, req, class) {
        response
            .insert_header(("Access-Control-Allow-Origin", origin))
            .insert_header(("Access-Control-Allow-Methods", "GET, POST, OPTIONS"))
            .insert_header(("Access-Control-Allow-Headers", ALLOWED_HEADERS))
            .insert_header(("Access-Control-Max-Age", "600"));
    }
    response.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_classified_by_what_they_change() {
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(classify(&get, "/v1/queue/echo_queue"), RouteClass::Module);
        assert_eq!(classify(&post, "/v1/queue/abc"), RouteClass::Module);
        assert_eq!(classify(&post, "/v1/log/"), RouteClass::Module);
        assert_eq!(classify(&get, "/v1/log/list"), RouteClass::Client);
        assert_eq!(
            classify(&post, "/v1/server/settings/Echo"),
            RouteClass::Admin
        );
        assert_eq!(
            classify(&get, "/v1/server/settings/Echo"),
            RouteClass::Client
        );
        assert_eq!(classify(&post, "/v1/jobs/abc/cancel"), RouteClass::Admin);
        assert_eq!(
            classify(&Method::OPTIONS, "/v1/server/settings/Echo"),
            RouteClass::Admin
        );
        assert_eq!(classify(&post, "/v1/text/chat"), RouteClass::Client);
        let put = Method::PUT;
        assert_eq!(classify(&put, "/v1/documents/a/b/c"), RouteClass::Admin);
        assert_eq!(
            classify(&Method::DELETE, "/v1/documents/a/b/c"),
            RouteClass::Admin
        );
        assert_eq!(classify(&get, "/v1/documents/a/b/c"), RouteClass::Client);
        assert_eq!(
            classify(&post, "/v1/documents/a/b/search"),
            RouteClass::Client
        );
        assert_eq!(classify(&post, "/v1/skills/a/b/run"), RouteClass::Client);
        assert_eq!(classify(&get, "/"), RouteClass::WebUi);
        assert_eq!(classify(&get, "/assets/api.js"), RouteClass::WebUi);
    }
}
