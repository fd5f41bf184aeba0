//! Server and module information for the explorer and dashboard: status,
//! version, system figures, module lists, module settings (start/stop/restart).
//! Shapes of CodeProject.AI Server 2.9, reference §2 "Server endpoints".

use std::sync::Arc;
use std::time::SystemTime;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::registry::{Module, ModuleStatus};
use crate::supervisor::Control;
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
        .route("/server/settings/{module_id}", web::get().to(get_settings));
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
/// (commands waiting in its queue) is a modhost extension.
fn status_entry(module: &Module, queued: usize) -> Value {
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
        .map(|m| status_entry(m, state.queues.len(&m.queue)))
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
        .map_err(ApiError::command)?;
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
