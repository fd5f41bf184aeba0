//! Server and module information for the explorer and dashboard: status,
//! version, system figures, module lists, module settings (start/stop/restart).
//! Shapes of CodeProject.AI Server 2.9, docs/protocol.md §2.4.

use std::sync::Arc;
use std::time::SystemTime;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::registry::{Module, ModuleStatus};
use crate::supervisor::{Control, ControlError};
use crate::{envelope, AppState, COMPATIBLE_VERSION};

pub fn configure(cfg: &mut web::ServiceConfig) {
    for prefix in ["/server/status", "/status"] {
        cfg.route(&format!("{prefix}/ping"), web::get().to(version))
            .route(&format!("{prefix}/version"), web::get().to(version))
            .route(
                &format!("{prefix}/system-status"),
                web::get().to(system_status),
            );
    }
    cfg.route("/module/list/status", web::get().to(list_status))
        .route("/module/list/running", web::get().to(list_running))
        .route("/module/list", web::get().to(list_installed))
        .route("/module/list/installed", web::get().to(list_installed))
        .route(
            "/server/settings/{module_id}",
            web::post().to(change_setting),
        )
        .route("/server/settings/{module_id}", web::get().to(get_settings))
        .route("/log/list", web::get().to(list_log));
}

/// `{"message":"2.9.6","version":{...}}`: the CodeProject API version modhost
/// is compatible with (modules check it against their ServerVersionRange),
/// plus modhost's own version.
async fn version() -> HttpResponse {
    let parts: Vec<u32> = COMPATIBLE_VERSION
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    HttpResponse::Ok().json(envelope(json!({
        "message": COMPATIBLE_VERSION,
        "version": {
            "major": parts.first(), "minor": parts.get(1), "patch": parts.get(2),
            "preRelease": null, "securityUpdate": false, "build": 0,
            "file": null, "releaseNotes": "modhost", "versionNumber": COMPATIBLE_VERSION,
            "version": COMPATIBLE_VERSION,
        },
        "modhostVersion": env!("CARGO_PKG_VERSION"),
    })))
}

async fn system_status(state: web::Data<AppState>) -> HttpResponse {
    let snap = state.system.snapshot();
    let running = state
        .registry
        .modules()
        .iter()
        .filter(|m| m.state().status == ModuleStatus::Started)
        .count();
    HttpResponse::Ok().json(envelope(json!({
        "data": {
            "cpuUsage": snap.cpu_usage,
            "systemMemUsage": snap.system_mem_usage,
            "systemMemTotal": snap.system_mem_total,
            "serverMemUsage": snap.server_mem_usage,
            "gpuUsage": snap.gpu_usage,
            "gpuMemUsage": snap.gpu_mem_usage,
            "gpuName": snap.gpu_name,
            "cpuCount": snap.cpu_count,
            "serverStatus": format!("{running} module(s) running"),
            "uptimeSecs": state.started.elapsed().as_secs(),
        }
    })))
}

fn rfc3339(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(
            chrono::DateTime::<chrono::Utc>::from(t)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
    })
}

/// One module's status entry, as `/v1/module/list/status` lists it; `queued`
/// (commands waiting in its queue), `crashes` (in a row), `nextStart` (the
/// next launch after a crash), `runningJobs` and `pid` are modhost
/// extensions.
fn status_entry(module: &Module, queued: usize, running_jobs: Vec<Value>) -> Value {
    let s = module.state();
    let settings = &module.manifest.settings;
    let device = s
        .inference_device
        .clone()
        .or_else(|| {
            s.status_data
                .as_ref()
                .and_then(|d| d.get("inferenceDevice"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "CPU".into());
    json!({
        "moduleId": module.id(),
        "queue": module.queue,
        "name": module.name(),
        "version": settings.version,
        "category": settings.publishing_info.category,
        "started": rfc3339(s.started),
        "lastSeen": rfc3339(s.last_seen),
        "status": s.status,
        "statusData": s.status_data,
        "inferenceDevice": device,
        "requestCount": s.request_count,
        "queued": queued,
        "autoStart": s.wanted,
        "launches": s.launches,
        "pid": s.pid,
        "lastError": s.last_error,
        "crashes": s.crashes,
        "nextStart": rfc3339(s.next_start),
        "runningJobs": running_jobs,
        "downloadableModels": [],
        "menus": [],
        "installSummary": "",
        "startupSummary": s.last_error.clone().unwrap_or_default(),
        "summary": format!("{} {} ({:?})", module.name(), settings.version, s.status),
    })
}

async fn list_status(state: web::Data<AppState>) -> HttpResponse {
    let statuses: Vec<Value> = state
        .registry
        .modules()
        .iter()
        .map(|m| {
            let running: Vec<Value> = state
                .jobs
                .list(Some(m.id()), None)
                .iter()
                .filter(|j| !j.status().is_final())
                .map(|j| {
                    let v = j.view();
                    json!({"id": v.id, "status": v.status, "createdAt": v.created_at,
                           "chars": v.reply.chars().count(),
                           "tokens": v.fields.get("completion_tokens").or(v.fields.get("tokens"))})
                })
                .collect();
            status_entry(m, state.queues.len(&m.queue), running)
        })
        .collect();
    HttpResponse::Ok().json(envelope(json!({"statuses": statuses})))
}

/// A module's description in camelCase, with its explorer UI.
fn description(module: &Module) -> Value {
    let mut value = module.manifest.settings.to_camel_case_json();
    if let Value::Object(map) = &mut value {
        map.insert("moduleId".into(), json!(module.id()));
        map.insert("status".into(), json!(module.state().status));
        let mut ui = map.remove("uiElements").unwrap_or_else(|| json!({}));
        if !ui.is_object() {
            ui = json!({});
        }
        ui["explorerUI"] = module
            .explorer_ui
            .clone()
            .unwrap_or_else(|| json!({"html": "", "script": "", "css": ""}));
        map.insert("uiElements".into(), ui);
    }
    value
}

async fn list_running(state: web::Data<AppState>) -> HttpResponse {
    let modules: Vec<Value> = state
        .registry
        .modules()
        .iter()
        .filter(|m| m.state().status == ModuleStatus::Started)
        .map(|m| description(m))
        .collect();
    HttpResponse::Ok().json(envelope(json!({"modules": modules})))
}

async fn list_installed(state: web::Data<AppState>) -> HttpResponse {
    let modules: Vec<Value> = state
        .registry
        .modules()
        .iter()
        .map(|m| {
            let mut d = description(m);
            d["isDownloadable"] = json!(false);
            d["currentlyInstalled"] = json!(m.manifest.settings.version);
            d
        })
        .collect();
    HttpResponse::Ok().json(envelope(json!({"modules": modules})))
}

#[derive(Deserialize)]
struct SettingForm {
    name: String,
    value: Option<String>,
}

/// The module with this id (any letter case).
///
/// # Errors
/// 404 naming the id.
fn known_module<'s>(state: &'s AppState, id: &str) -> Result<&'s Arc<Module>, ApiError> {
    state
        .registry
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("no module with id '{id}'")))
}

/// `name=AutoStart, value=true|false` starts or stops the module;
/// `name=Restart` restarts it. Changes last until the server stops.
async fn change_setting(
    state: web::Data<AppState>,
    path: web::Path<String>,
    form: web::Form<SettingForm>,
) -> Result<HttpResponse, ApiError> {
    let module = known_module(&state, &path.into_inner())?;
    let value = form
        .value
        .as_deref()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let control = match form.name.to_ascii_lowercase().as_str() {
        "autostart" => match value.as_str() {
            "true" | "1" | "yes" => Control::Start,
            "false" | "0" | "no" => Control::Stop,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "AutoStart must be true or false, not '{other}'"
                )))
            }
        },
        "restart" => Control::Restart,
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown setting '{other}': use AutoStart (true|false) or Restart"
            )))
        }
    };
    state
        .supervisor
        .control(module.id(), control)
        .map_err(|err| match err {
            ControlError::NotHere(_) => ApiError::BadRequest(err.to_string()),
            ControlError::Busy(_) => {
                ApiError::failure(modhost_protocol::FailureKind::QueueFull, err.to_string())
            }
        })?;
    Ok(HttpResponse::Ok().json(envelope(json!({
        "message": format!("{control:?} requested for module {}", module.id()),
    }))))
}

async fn get_settings(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let module = known_module(&state, &path.into_inner())?;
    Ok(HttpResponse::Ok().json(envelope(json!({
        "settings": {"autoStart": module.state().wanted},
        "environmentVariables": module.manifest.settings.environment_variables,
    }))))
}

#[derive(Deserialize)]
struct LogListQuery {
    count: Option<usize>,
    last_id: Option<u64>,
    /// modhost extension: only entries of this module (id or name).
    #[serde(rename = "moduleId")]
    module_id: Option<String>,
}

async fn list_log(state: web::Data<AppState>, query: web::Query<LogListQuery>) -> HttpResponse {
    let count = query.count.unwrap_or(10).min(crate::logs::LOG_CAPACITY);
    let category = query.module_id.as_deref().map(|id| {
        state
            .registry
            .get(id)
            .map_or_else(|| id.to_owned(), |m| m.name().to_owned())
    });
    let mut entries = state.logs.list(query.last_id.unwrap_or(0), usize::MAX);
    if let Some(category) = &category {
        entries.retain(|e| e.category.eq_ignore_ascii_case(category));
    }
    // The newest `count`: a live tail that fell behind skips to the present.
    let skip = entries.len().saturating_sub(count);
    entries.drain(..skip);
    HttpResponse::Ok().json(envelope(json!({"entries": entries})))
}
