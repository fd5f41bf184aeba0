//! The HTTP client a test server hands out ([`Api`]), and the module end
//! of the protocol for a module the server launched ([`ModuleSide`]).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// An HTTP client of one server, with the requests tests make often; both
/// [`Server`](crate::Server) and [`InProcess`](crate::InProcess) dereference to it.
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client for requests to `base`.
    pub http: reqwest::Client,
}

impl Api {
    /// A client of the server on `port` of this machine.
    pub fn new(port: u16) -> Result<Api> {
        Ok(Api {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        })
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET a JSON document.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let response = self.http.get(self.url(path)).send().await?;
        Ok(response.json().await?)
    }

    /// POST a urlencoded form, returning status and JSON body.
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Result<(u16, Value)> {
        let response = self.http.post(self.url(path)).form(form).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// The `/v1/module/list/status` entry of `module_id`.
    pub async fn module_status(&self, module_id: &str) -> Result<Value> {
        let list = self.get_json("/v1/module/list/status").await?;
        list["statuses"]
            .as_array()
            .and_then(|s| s.iter().find(|m| m["moduleId"] == module_id))
            .cloned()
            .with_context(|| format!("{module_id} not in {list}"))
    }

    /// The pid of `module_id`'s process, from its status entry.
    pub async fn module_pid(&self, module_id: &str) -> Result<u32> {
        let entry = self.module_status(module_id).await?;
        let pid = entry["pid"]
            .as_u64()
            .with_context(|| format!("{module_id} has no process: {entry}"))?;
        Ok(pid as u32)
    }

    /// The environment `module_id`'s process was started with, read from
    /// `/proc/<pid>/environ`: what the server passed it.
    pub async fn module_env(
        &self,
        module_id: &str,
    ) -> Result<std::collections::HashMap<String, String>> {
        let pid = self.module_pid(module_id).await?;
        let raw = std::fs::read(format!("/proc/{pid}/environ"))
            .with_context(|| format!("reading the environment of {module_id} (pid {pid})"))?;
        Ok(raw
            .split(|&b| b == 0)
            .filter_map(|var| {
                let var = String::from_utf8_lossy(var);
                var.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect())
    }

    /// How `module_id`'s process reaches the server, from the environment the
    /// server gave it: the test can then play that module.
    pub async fn module_side(&self, module_id: &str) -> Result<ModuleSide> {
        let env = self.module_env(module_id).await?;
        let var = |name: &str| {
            env.get(name)
                .cloned()
                .with_context(|| format!("{module_id} has no {name}"))
        };
        Ok(ModuleSide {
            base: format!("http://127.0.0.1:{}/v1", var("CPAI_PORT")?),
            module_id: module_id.to_owned(),
            queue: var("CPAI_MODULE_QUEUENAME")?,
            token: var("MODHOST_MODULE_TOKEN")?,
        })
    }

    /// Sets `module_id`'s AutoStart, as the dashboard's Start and Stop do:
    /// `POST /v1/server/settings/{id}`; the HTTP status and the JSON body.
    pub async fn set_autostart(&self, module_id: &str, on: bool) -> Result<(u16, Value)> {
        let value = if on { "true" } else { "false" };
        self.post_form(
            &format!("/v1/server/settings/{module_id}"),
            &[("name", "AutoStart"), ("value", value)],
        )
        .await
    }

    /// Polls until `module_id` reports `status`, up to `timeout`.
    pub async fn wait_for_status(
        &self,
        module_id: &str,
        status: &str,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let entry = self.module_status(module_id).await?;
            if entry["status"] == status {
                return Ok(entry);
            }
            if Instant::now() > deadline {
                bail!("{module_id} did not reach {status} within {timeout:?}; last: {entry}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The module end of the protocol for a module the server launched, as its
/// environment says: its listener, queue name (with the launch token) and
/// token.
#[derive(Debug, Clone)]
pub struct ModuleSide {
    /// `http://127.0.0.1:<CPAI_PORT>/v1`.
    pub base: String,
    pub module_id: String,
    /// `CPAI_MODULE_QUEUENAME`: `<queue>~<token>`.
    pub queue: String,
    /// `MODHOST_MODULE_TOKEN`.
    pub token: String,
}

impl ModuleSide {
    /// The long-poll URL, as the CodeProject Python SDK builds it.
    pub fn poll_url(&self) -> String {
        format!(
            "{}/queue/{}?moduleId={}",
            self.base, self.queue, self.module_id
        )
    }

    /// The URL a reply to `reqid` is posted to.
    pub fn reply_url(&self, reqid: &str) -> String {
        format!("{}/queue/{reqid}?moduleId={}", self.base, self.module_id)
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}
