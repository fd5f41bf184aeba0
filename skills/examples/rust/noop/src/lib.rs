//! `noop`: returns its input bytes unchanged; the smallest possible skill.

wit_bindgen::generate!({
    path: "../../../../skillhost/wit",
    world: "pharia:skill/skill",
});

use exports::pharia::skill::skill_handler::{Error, Guest, SkillMetadata};

struct Skill;

impl Guest for Skill {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        Ok(input)
    }

    fn metadata() -> SkillMetadata {
        SkillMetadata {
            description: Some("Returns its input".to_owned()),
            input_schema: br#"{}"#.to_vec(),
            output_schema: br#"{}"#.to_vec(),
        }
    }
}

export!(Skill);
