//! Server and module information for the explorer and dashboard: status,
//! version, system figures, module lists, module settings (start/stop/restart).
//! Shapes of CodeProject.AI Server 2.9, docs/protocol.md §2.4.

use std::time::SystemTime;

use actix_web::{web, HttpResponse, Route};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::registry::{Module, ModuleStatus};
use crate::{envelope, AppState, COMPATIBLE_VERSION};

pub fn configure(cfg: &mut web::ServiceConfig) {
    let mut routes: Vec<(String, fn() -> Route)> = Vec::new();
    for prefix in ["/server/status", "/status"] {
        routes.extend([
            (
                format!("{prefix}/ping"),
                (|| web::get().to(version)) as fn() -> Route,
            ),
            (format!("{prefix}/version"), || web::get().to(version)),
            (format!("{prefix}/system-status"), || {
                web::get().to(system_status)
            }),
            (format!("{prefix}/updateavailable"), || {
                web::get().to(update_available)
            }),
        ]);
    }
    routes.extend([
        (
            "/module/list/status".to_owned(),
            (|| web::get().to(list_status)) as fn() -> Route,
        ),
        ("/module/list/running".to_owned(), || {
            web::get().to(list_running)
        }),
        ("/module/list".to_owned(), || web::get().to(list_installed)),
        ("/module/list/installed".to_owned(), || {
            web::get().to(list_installed)
        }),
        ("/module/list/available".to_owned(), || {
            web::get().to(list_installed)
        }),
        ("/server/mesh/summary".to_owned(), || {
            web::get().to(mesh_summary)
        }),
        ("/log/list".to_owned(), || web::get().to(list_log)),
    ]);
    // CodeProject's pages and clients write some of these with a trailing
    // slash (`module/list/`); both spellings are served.
    for (path, route) in routes {
        cfg.route(&format!("{path}/"), route())
            .route(&path, route());
    }
}

/// `{"message":"2.9.6","version":{...}}`: the CodeProject API version modhost
/// is compatible with (modules check it against their ServerVersionRange),
/// plus modhost's own version.
async fn version() -> HttpResponse {
    HttpResponse::Ok().json(envelope(json!({
        "message": COMPATIBLE_VERSION,
        "version": version_info(),
        "modhostVersion": env!("CARGO_PKG_VERSION"),
    })))
}

/// CodeProject's version object for [`COMPATIBLE_VERSION`].
fn version_info() -> Value {
    let parts: Vec<u32> = COMPATIBLE_VERSION
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    json!({
        "major": parts.first(), "minor": parts.get(1), "patch": parts.get(2),
        "preRelease": null, "securityUpdate": false, "build": 0,
        "file": null, "releaseNotes": "modhost", "versionNumber": COMPATIBLE_VERSION,
        "version": COMPATIBLE_VERSION,
    })
}

/// `{"updateAvailable": false, "current", "latest", "version", "message"}`:
/// modhost contacts no update server, so it never knows of an update; the
/// message says so rather than claiming the newest version.
async fn update_available() -> HttpResponse {
    HttpResponse::Ok().json(envelope(json!({
        "updateAvailable": false,
        "current": version_info(),
        "latest": version_info(),
        "version": version_info(),
        "message": format!(
            "modhost {} does not check for updates: it contacts no update server",
            env!("CARGO_PKG_VERSION")
        ),
    })))
}

/// `{"enabled": false, "hosts": [], ...}`: modhost has no mesh of servers;
/// every route is served by this server's own modules.
async fn mesh_summary() -> HttpResponse {
    HttpResponse::Ok().json(envelope(json!({
        "enabled": false,
        "isEnabled": false,
        "allowBroadcast": false,
        "acceptForwardedRequests": false,
        "hostname": crate::hostname(),
        "hosts": [],
        "servers": [],
        "message": "modhost has no mesh: requests are served by this server's modules only",
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
            // Numbers even without a GPU: CodeProject's dashboard formats
            // them with toFixed.
            "gpuUsage": snap.gpu_usage.unwrap_or(0.0),
            "gpuMemUsage": snap.gpu_mem_usage.unwrap_or(0),
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
        "menus": module.menus,
        "installSummary": "",
        "startupSummary": startup_summary(&s),
        "summary": format!("{} {} ({:?})", module.name(), settings.version, s.status),
    })
}

/// One line on how the module's last start went, as CodeProject's dashboard
/// shows under a module.
fn startup_summary(s: &crate::registry::ModuleState) -> String {
    let pid = s.pid.map(|p| format!(", process {p}")).unwrap_or_default();
    match s.status {
        ModuleStatus::Started => format!("Started (launch {}{pid})", s.launches),
        ModuleStatus::Starting => format!("Starting (launch {}{pid})", s.launches),
        ModuleStatus::NoAutoStart => "Not started: AutoStart is off; use Start".into(),
        ModuleStatus::NotAvailable => "Not available on this platform".into(),
        other => match &s.last_error {
            Some(error) => format!("{other:?}: {error}"),
            None => format!("{other:?}"),
        },
    }
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
