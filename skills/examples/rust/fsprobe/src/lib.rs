//! `fsprobe`: tries to read a file through WASI, to show what the host lets a
//! skill see of the file system (it should see nothing).
//!
//! Input `{"path": str}`; output `{"ok": true, "text": str}` when the read
//! succeeded, else `{"ok": false, "error": str}` with the I/O error.

wit_bindgen::generate!({
    path: "../../../../skillhost/wit",
    world: "pharia:skill/skill",
});

use exports::pharia::skill::skill_handler::{Error, Guest, SkillMetadata};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    path: String,
}

struct Skill;

impl Guest for Skill {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let input: Input = serde_json::from_slice(&input)
            .map_err(|e| Error::InvalidInput(format!("expected {{\"path\": str}}: {e}")))?;
        let output = match std::fs::read_to_string(&input.path) {
            Ok(text) => json!({ "ok": true, "text": text }),
            Err(error) => json!({ "ok": false, "error": error.to_string() }),
        };
        Ok(output.to_string().into_bytes())
    }

    fn metadata() -> SkillMetadata {
        SkillMetadata {
            description: Some("Tries to read a file".to_owned()),
            input_schema: br#"{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}"#.to_vec(),
            output_schema: br#"{"type":"object","properties":{"ok":{"type":"boolean"},"text":{"type":"string"},"error":{"type":"string"}},"required":["ok"]}"#.to_vec(),
        }
    }
}

export!(Skill);
