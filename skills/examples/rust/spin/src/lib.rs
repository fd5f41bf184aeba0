//! `spin`: `run` never returns; it burns CPU until the host stops it (a test
//! of the host's time limits).

wit_bindgen::generate!({
    path: "../../../../skillhost/wit",
    world: "pharia:skill/skill",
});

use exports::pharia::skill::skill_handler::{Error, Guest, SkillMetadata};

struct Skill;

impl Guest for Skill {
    fn run(_input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let mut counter: u64 = 0;
        loop {
            // black_box keeps the optimiser from proving the loop pointless.
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }

    fn metadata() -> SkillMetadata {
        SkillMetadata {
            description: Some("Loops forever".to_owned()),
            input_schema: br#"{}"#.to_vec(),
            output_schema: br#"{}"#.to_vec(),
        }
    }
}

export!(Skill);
