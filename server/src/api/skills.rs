//! The skills API (skills/README.md), in Pharia Kernel's shape:
//! - `GET /v1/skills`: a sorted array of `"namespace/name"`;
//! - `POST /v1/skills/{namespace}/{name}/run`: any JSON in, the skill's
//!   JSON out; the run is a job (`X-Job-Id` header), cancellable with
//!   `POST /v1/jobs/{id}/cancel`;
//! - `GET /v1/skills/{namespace}/{name}/metadata`: `{description, version,
//!   skill_type, input_schema, output_schema}`.
//!
//! Errors say who should act: 400 for bad input or the skill's own error,
//! 404 for an unknown skill, 500 for a broken component, 503 for a trap or
//! a limit; the body is the failure envelope with `errorCode` and, for a
//! run, `jobId`.

use actix_web::{web, HttpRequest, HttpResponse};
use modhost_skills::{SkillError, SkillName};
use serde_json::json;

use crate::error::ApiError;
use crate::payload::{read_body, BodyLimits};
use crate::{envelope, skills, AppState};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/skills", web::get().to(list))
        .route("/skills/status", web::get().to(status))
        .route("/skills/{namespace}/{name}/run", web::post().to(run))
        .route(
            "/skills/{namespace}/{name}/metadata",
            web::get().to(metadata),
        );
}

async fn list(state: web::Data<AppState>) -> HttpResponse {
    let names: Vec<String> = state
        .skills
        .list()
        .iter()
        .map(|found| found.name.to_string())
        .collect();
    HttpResponse::Ok().json(names)
}

async fn run(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let name = SkillName::parse(&path.0, &path.1)?;
    let limits = BodyLimits {
        max_bytes: state.config.max_body_bytes,
        max_fields: 0,
        read_timeout: state.config.body_read_timeout,
    };
    let input = read_body(req.headers(), body, limits).await?;
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&input) {
        return Err(SkillError::InvalidInput(format!("the input is not JSON: {e}")).into());
    }
    let (job, result) = skills::run(&state.skills, &state.jobs, &name, input.to_vec()).await;
    match result {
        Ok(output) => Ok(HttpResponse::Ok()
            .insert_header(("X-Job-Id", job))
            .json(output)),
        Err(error) => Err(ApiError::Skill {
            error,
            job: Some(job),
        }),
    }
}

async fn metadata(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let name = SkillName::parse(&path.0, &path.1)?;
    let metadata = state.skills.metadata(&name).await?;
    Ok(HttpResponse::Ok().json(metadata))
}

/// `GET /v1/skills/status` for the dashboard: the skills with their files,
/// the folders and the limits.
async fn status(state: web::Data<AppState>) -> HttpResponse {
    let limits = state.skills.limits();
    let skills: Vec<_> = state
        .skills
        .list()
        .iter()
        .map(|f| {
            json!({
                "name": f.name.to_string(),
                "path": f.path.display().to_string(),
                "bytes": f.bytes,
            })
        })
        .collect();
    HttpResponse::Ok().json(envelope(json!({
        "skills": skills,
        "folders": state.skills.folders().iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "witVersion": modhost_skills::WIT_VERSION,
        "limits": {
            "cpuSeconds": limits.cpu_time.as_secs_f64(),
            "memoryMiB": limits.memory_bytes >> 20,
            "instances": limits.instances,
        },
    })))
}
