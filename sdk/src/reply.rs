//! Reply envelopes, inference statistics and the status-update JSON.
//!
//! The envelope itself is defined in `modhost_protocol` (docs/protocol.md
//! §1.4); the status update's shape is docs/protocol.md §1.5.

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::command::{obj, JsonMap};
use crate::context::ModuleContext;
use crate::request::RequestData;

pub(crate) use modhost_protocol::error_body;

/// The envelope of a reply to `request` ([`modhost_protocol::envelope`]),
/// with this module's identity.
pub(crate) fn envelope(
    body: JsonMap,
    ctx: &ModuleContext,
    request: &RequestData,
    inference_device: &str,
    process_ms: u64,
) -> JsonMap {
    modhost_protocol::envelope(
        body,
        &modhost_protocol::EnvelopeFields {
            module_id: &ctx.module_id,
            module_name: &ctx.module_name,
            command: request.raw_command(),
            request_id: request.request_id(),
            inference_device,
            process_ms,
        },
    )
}

/// Inference counts for the status update.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    // parking_lot: a few integer updates, never held across an await.
    inner: Mutex<Counts>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Counts {
    successful: u64,
    failed: u64,
    total_ms: u64,
}

impl Stats {
    /// Counts one finished inference. `reply` decides success (its
    /// `success` field) and time (`inferenceMs` if the module reported it,
    /// else `fallback_ms`).
    pub(crate) fn record(&self, reply: &JsonMap, fallback_ms: u64) {
        let success = reply
            .get("success")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let ms = reply
            .get("inferenceMs")
            .and_then(Value::as_f64)
            .map_or(fallback_ms, |ms| ms.max(0.0) as u64);
        let mut c = self.inner.lock();
        if success {
            c.successful += 1;
            c.total_ms += ms;
        } else {
            c.failed += 1;
        }
    }

    /// The `statusData` object: `inferenceDevice`, `inferenceLibrary`,
    /// `canUseGPU` (a *string*, `"true"`/`"false"`), `successfulInferences`,
    /// `failedInferences`, `numInferences`, `averageInferenceMs` (float, over
    /// successful inferences), then the module's own fields from
    /// [`ModuleRunner::status`](crate::ModuleRunner::status), which may
    /// override these (e.g. `inferenceLibrary: "CUDA"`).
    pub(crate) fn status_data(
        &self,
        inference_device: &str,
        can_use_gpu: bool,
        module_fields: JsonMap,
    ) -> JsonMap {
        let c = *self.inner.lock();
        let average = if c.successful == 0 {
            0.0
        } else {
            c.total_ms as f64 / c.successful as f64
        };
        let mut data = obj(json!({
            "inferenceDevice": inference_device,
            "inferenceLibrary": "",
            "canUseGPU": if can_use_gpu { "true" } else { "false" },
            "successfulInferences": c.successful,
            "failedInferences": c.failed,
            "numInferences": c.successful + c.failed,
            "averageInferenceMs": average,
        }));
        data.extend(module_fields);
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ModuleContext {
        ModuleContext::new("Echo", "http://127.0.0.1:1/v1/")
    }

    #[test]
    fn envelope_adds_the_standard_fields_and_defaults_success() {
        let req = RequestData::new("Echo").with_request_id("r1");
        let body = envelope(obj(json!({"message": "hi"})), &ctx(), &req, "CPU", 7);
        assert_eq!(
            Value::Object(body),
            json!({
                "message": "hi", "success": true, "moduleId": "Echo", "moduleName": "Echo",
                "code": 200, "command": "Echo", "requestId": "r1", "inferenceDevice": "CPU",
                "processMs": 7,
            })
        );
    }

    #[test]
    fn envelope_marks_failures_500_and_keeps_module_timing() {
        let req = RequestData::new("prompt").with_request_id("r2");
        let body = envelope(error_body("missing value 'prompt'"), &ctx(), &req, "GPU", 3);
        assert_eq!(body["success"], false);
        assert_eq!(body["code"], 500);
        assert_eq!(body["error"], "missing value 'prompt'");
        assert_eq!(body["inferenceDevice"], "GPU");

        let body = envelope(
            obj(json!({"processMs": 99, "moduleId": "spoofed"})),
            &ctx(),
            &req,
            "CPU",
            3,
        );
        assert_eq!(body["processMs"], 99);
        assert_eq!(body["moduleId"], "Echo");
    }

    #[test]
    fn status_data_shape_has_can_use_gpu_as_a_string() {
        let stats = Stats::default();
        stats.record(&obj(json!({"success": true, "inferenceMs": 30})), 1);
        stats.record(&obj(json!({})), 10);
        stats.record(&obj(json!({"success": false})), 10);
        let data = stats.status_data("GPU", true, obj(json!({"inferenceLibrary": "CUDA"})));
        assert_eq!(
            Value::Object(data),
            json!({
                "inferenceDevice": "GPU", "inferenceLibrary": "CUDA", "canUseGPU": "true",
                "successfulInferences": 2, "failedInferences": 1, "numInferences": 3,
                "averageInferenceMs": 20.0,
            })
        );
        let data = Stats::default().status_data("CPU", false, JsonMap::new());
        assert_eq!(data["canUseGPU"], "false");
        assert_eq!(data["averageInferenceMs"], 0.0);
        assert_eq!(data["inferenceLibrary"], "");
    }
}
