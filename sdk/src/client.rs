//! The module's HTTP calls to the server: poll the queue, post replies,
//! status updates and (on modhost) progress pushes.
//!
//! Wire format: docs/protocol.md §1.2, §1.4, §1.5, and §4.1–§4.2 for the
//! launch token and progress pushes.

use std::time::Duration;

use reqwest::Url;

use crate::command::JsonMap;
use crate::context::ModuleContext;
use crate::error::ModuleError;

/// Client timeout of one long poll (the Python and .NET SDKs use 15 s; the
/// server answers or re-arms within ~10 s).
pub(crate) const POLL_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout for replies and status posts (the Python SDK's 10 s).
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at posting a reply when the connection fails (not when the
/// server answers): a reply is the only copy of a command's result.
const REPLY_ATTEMPTS: u32 = 3;

/// What a poll returned.
#[derive(Debug, PartialEq)]
pub(crate) enum Polled {
    /// The body of a 200: one queue item.
    Item(String),
    /// 2xx with an empty body (e.g. 204), or the long poll timed out.
    Nothing,
}

/// A failed server call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
}

/// The server's endpoints for one module.
#[derive(Debug, Clone)]
pub(crate) struct ServerClient {
    http: reqwest::Client,
    base: Url,
    module_id: String,
    queue_name: String,
    /// This launch's token, sent as `X-Modhost-Token` on every call.
    token: Option<String>,
}

impl ServerClient {
    /// # Errors
    /// `ctx.server_url` is not an absolute http(s) URL, or the HTTP client
    /// cannot be built.
    pub(crate) fn new(ctx: &ModuleContext) -> Result<Self, ModuleError> {
        let base = Url::parse(&ctx.server_url)
            .ok()
            .filter(|u| !u.cannot_be_a_base())
            .ok_or_else(|| ModuleError(format!("invalid server URL '{}'", ctx.server_url)))?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &ctx.token {
            let value = reqwest::header::HeaderValue::from_str(token).map_err(|_| {
                ModuleError(format!(
                    "{} is not a valid header value",
                    modhost_protocol::TOKEN_ENV
                ))
            })?;
            headers.insert(modhost_protocol::TOKEN_HEADER, value);
        }
        let http = reqwest::Client::builder()
            // The server is local; a proxy from the environment must not
            // intercept it.
            .no_proxy()
            .default_headers(headers)
            .build()
            .map_err(|e| ModuleError(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            module_id: ctx.module_id.clone(),
            queue_name: ctx.queue_name.clone(),
            token: ctx.token.clone(),
        })
    }

    /// `{server}` + the given path segments (percent-encoded).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // Cannot fail: `new` checked that the base URL can be a base.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn with_module_id(&self, mut url: Url) -> Url {
        url.query_pairs_mut()
            .append_pair("moduleId", &self.module_id);
        url
    }

    /// The poll URL, for logs.
    pub(crate) fn poll_url(&self) -> Url {
        self.with_module_id(self.url(&["queue", &self.queue_name]))
    }

    /// One long poll: `GET {server}queue/{queue}?moduleId={id}`.
    ///
    /// # Errors
    /// Connection failures and non-2xx statuses.
    pub(crate) async fn poll(&self) -> Result<Polled, ClientError> {
        let result = async {
            let response = self
                .http
                .get(self.poll_url())
                .timeout(POLL_TIMEOUT)
                .send()
                .await?;
            let response = check(response).await?;
            Ok::<_, ClientError>(response.text().await?)
        }
        .await;
        match result {
            Ok(body) if body.trim().is_empty() => Ok(Polled::Nothing),
            Ok(body) => Ok(Polled::Item(body)),
            // Long polls time out when nothing is queued; that is normal.
            Err(ClientError::Http(e)) if e.is_timeout() => Ok(Polled::Nothing),
            Err(e) => Err(e),
        }
    }

    /// Whether this module speaks modhost's extensions (it has a token).
    pub(crate) fn pushes_progress(&self) -> bool {
        self.token.is_some()
    }

    /// Posts a reply: `POST {server}queue/{reqid}?moduleId={id}`, JSON body.
    /// A failed connection is tried again, up to three attempts in all.
    ///
    /// # Errors
    /// Connection failures and non-2xx statuses (400 when the server no
    /// longer waits for `request_id`).
    pub(crate) async fn post_reply(
        &self,
        request_id: &str,
        body: &JsonMap,
    ) -> Result<(), ClientError> {
        let url = self.with_module_id(self.url(&["queue", request_id]));
        let mut attempt = 1;
        loop {
            let sent = self
                .http
                .post(url.clone())
                .timeout(POST_TIMEOUT)
                .json(body)
                .send()
                .await;
            match sent {
                Ok(response) => return check(response).await.map(drop),
                Err(e) if attempt < REPLY_ATTEMPTS && (e.is_connect() || e.is_request()) => {
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Pushes the progress of several long commands at once: `POST
    /// {server}queue/progress?moduleId={id}` with a JSON object from command
    /// id to update (docs/protocol.md §4.2).
    ///
    /// # Errors
    /// Connection failures and non-2xx statuses (404 when one of the
    /// commands has no job; the others' updates are applied).
    pub(crate) async fn post_progress(
        &self,
        batch: &modhost_protocol::ProgressBatch,
    ) -> Result<(), ClientError> {
        let url = self.with_module_id(self.url(&["queue", "progress"]));
        let response = self
            .http
            .post(url)
            .timeout(POST_TIMEOUT)
            .json(batch)
            .send()
            .await?;
        check(response).await.map(drop)
    }

    /// Posts a status update: `POST {server}queue/updatemodulestatus/{id}`,
    /// urlencoded `statusData=<JSON string>`.
    ///
    /// # Errors
    /// Connection failures and non-2xx statuses.
    pub(crate) async fn post_status(&self, status_data: &JsonMap) -> Result<(), ClientError> {
        let url = self.url(&["queue", "updatemodulestatus", &self.module_id]);
        let json = serde_json::Value::Object(status_data.clone()).to_string();
        let response = self
            .http
            .post(url)
            .timeout(POST_TIMEOUT)
            .form(&[("statusData", json)])
            .send()
            .await?;
        check(response).await.map(drop)
    }
}

/// Turns a non-2xx response into an error carrying (the start of) its body.
async fn check(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body: String = response
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    Err(ClientError::Status {
        status: status.as_u16(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_protocol() {
        let mut ctx = ModuleContext::new("My Mod", "http://localhost:32168/v1/");
        ctx.queue_name = "my mod_queue".into();
        let c = ServerClient::new(&ctx).expect("client");
        assert_eq!(
            c.poll_url().as_str(),
            "http://localhost:32168/v1/queue/my%20mod_queue?moduleId=My+Mod"
        );
        assert_eq!(
            c.with_module_id(c.url(&["queue", "r-1"])).as_str(),
            "http://localhost:32168/v1/queue/r-1?moduleId=My+Mod"
        );
        assert_eq!(
            c.url(&["queue", "updatemodulestatus", "Echo"]).as_str(),
            "http://localhost:32168/v1/queue/updatemodulestatus/Echo"
        );
    }

    #[test]
    fn rejects_a_bad_server_url() {
        let ctx = ModuleContext::new("Echo", "not a url");
        assert!(ServerClient::new(&ctx)
            .unwrap_err()
            .message()
            .starts_with("invalid server URL"));
    }
}
