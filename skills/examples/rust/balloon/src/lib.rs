//! `balloon`: `run` allocates without end, 1 MiB at a time, until the host's
//! memory limit stops it (a test of the host's memory limits).

wit_bindgen::generate!({
    path: "../../../../skillhost/wit",
    world: "pharia:skill/skill",
});

use exports::pharia::skill::skill_handler::{Error, Guest, SkillMetadata};

struct Skill;

const MIB: usize = 1 << 20;

impl Guest for Skill {
    fn run(_input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let mut held: Vec<Vec<u8>> = Vec::new();
        loop {
            // Nonzero bytes, so every page is really written.
            held.push(std::hint::black_box(vec![0xA5u8; MIB]));
            std::hint::black_box(&mut held);
        }
    }

    fn metadata() -> SkillMetadata {
        SkillMetadata {
            description: Some("Allocates memory until stopped".to_owned()),
            input_schema: br#"{}"#.to_vec(),
            output_schema: br#"{}"#.to_vec(),
        }
    }
}

export!(Skill);
