//! Module settings: `POST /v1/server/settings/{moduleId}` starts, stops and
//! restarts a module, and changes its other settings; `GET` shows them
//! (docs/protocol.md §2.5).
//!
//! The form (`name`, `value`) comes multipart, as CodeProject's dashboard
//! sends it, or urlencoded, or as a query string. `AutoStart` (`true` or
//! `false`) starts or stops the module; `Restart` restarts it; any other name
//! (`EnableGPU`, `CPAI_HALF_PRECISION`, a `UIElements.Menus` setting such as
//! `MODEL_SIZE`) is an override that reaches the module as environment.
//! Every change but `Restart` is kept on disk (`crate::overrides`) and
//! outlives the server; an override restarts a running module, as
//! CodeProject does.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use modhost_protocol::FailureKind;
use serde_json::json;

use crate::error::ApiError;
use crate::overrides::{self, SettingError, AUTO_START};
use crate::payload::{self, BodyLimits};
use crate::registry::Module;
use crate::supervisor::{Control, ControlError};
use crate::{envelope, AppState};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/server/settings/{module_id}",
        web::post().to(change_setting),
    )
    .route("/server/settings/{module_id}", web::get().to(get_settings));
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

/// Sends `control` to the module's supervisor task.
fn control(state: &AppState, module: &Module, control: Control) -> Result<(), ApiError> {
    state
        .supervisor
        .control(module.id(), control)
        .map_err(|err| match err {
            ControlError::NotHere(_) => ApiError::BadRequest(err.to_string()),
            ControlError::Busy(_) => ApiError::failure(FailureKind::QueueFull, err.to_string()),
        })
}

fn saved(state: &AppState, module: &Module, name: &str, value: &str) -> Result<(), ApiError> {
    state
        .overrides
        .set(module.id(), name, value)
        .map_err(|err| match err {
            SettingError::Save { .. } => ApiError::Internal(err.to_string()),
            _ => ApiError::BadRequest(err.to_string()),
        })
}

/// `name=AutoStart, value=true|false`, `name=Restart`, or `name=<setting>,
/// value=<text>`.
///
/// # Errors
/// 400 for a missing name or value, an AutoStart that is not a boolean, or
/// a refused setting name (naming why); 404 for an unknown module; 500 when
/// the settings file cannot be written.
async fn change_setting(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let module = known_module(&state, &path.into_inner())?;
    let limits = BodyLimits {
        max_bytes: 64 * 1024,
        max_fields: 16,
        read_timeout: state.config.body_read_timeout,
    };
    let values = payload::parse(req.query_string(), req.headers(), body, limits).await?;
    let name = values
        .get("name")
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest(
                "missing value 'name': the setting to change (AutoStart, Restart, or a module setting)".into(),
            )
        })?;
    let value = values.get("value").map(str::trim);
    let message = if name.eq_ignore_ascii_case(AUTO_START) {
        let on = match value.unwrap_or("").to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "AutoStart must be true or false, not '{other}'"
                )))
            }
        };
        let wanted = if on { Control::Start } else { Control::Stop };
        control(&state, module, wanted)?;
        saved(
            &state,
            module,
            AUTO_START,
            if on { "true" } else { "false" },
        )?;
        format!("{wanted:?} requested for module {}", module.id())
    } else if name.eq_ignore_ascii_case("restart") {
        control(&state, module, Control::Restart)?;
        format!("Restart requested for module {}", module.id())
    } else {
        let value = value.ok_or_else(|| {
            ApiError::BadRequest(format!("missing value 'value' for setting '{name}'"))
        })?;
        saved(&state, module, name, value)?;
        let env = overrides::env_name(name).unwrap_or_default();
        if module.state().wanted {
            control(&state, module, Control::Restart)?;
            format!(
                "{name} set to '{value}' for module {} ({env} in its environment); restarting it",
                module.id()
            )
        } else {
            format!(
                "{name} set to '{value}' for module {} ({env} in its environment at its next start)",
                module.id()
            )
        }
    };
    state
        .logs
        .add(crate::logs::LogLevel::Information, "Server", "", &message);
    Ok(HttpResponse::Ok().json(envelope(json!({ "message": message }))))
}

/// `{"settings": {"autoStart", "overrides": {name: value}},
/// "environmentVariables": the manifest's, with the overrides applied}`.
async fn get_settings(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let module = known_module(&state, &path.into_inner())?;
    let saved = state.overrides.get(module.id());
    let mut environment = module.manifest.settings.environment_variables.clone();
    for (name, value) in &saved {
        if let Some(env) = overrides::env_name(name) {
            environment.insert(env.clone(), overrides::env_value(&env, value));
        }
    }
    Ok(HttpResponse::Ok().json(envelope(json!({
        "settings": {"autoStart": module.state().wanted, "overrides": saved},
        "environmentVariables": environment,
    }))))
}
