//! `oldskill`: a skill built against `pharia:skill@0.2.0` (its own WIT in
//! `wit/`), as a skill made for another version of the interface would be.
//! `run` returns `{"old":true}`.

wit_bindgen::generate!({
    path: "wit",
    world: "pharia:skill/skill",
});

use exports::pharia::skill::skill_handler::{Error, Guest};

struct Skill;

impl Guest for Skill {
    fn run(_input: Vec<u8>) -> Result<Vec<u8>, Error> {
        Ok(br#"{"old":true}"#.to_vec())
    }
}

export!(Skill);
