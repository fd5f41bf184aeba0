//! CSI `language`: which of the candidate languages a text is in, by
//! `whatlang` (trigram statistics, no models to load).
//!
//! Languages are ISO 639-3 codes, as the WIT lists them. whatlang knows 52
//! of the WIT's 75; [`UNDETECTABLE`] names the others, which are accepted
//! as candidates but never returned. `zho` and `fas` are whatlang's `cmn`
//! and `pes`.

use whatlang::{Detector, Lang};

use crate::error::CsiError;

/// The WIT's codes whatlang cannot detect.
pub const UNDETECTABLE: &[&str] = &[
    "bos", "cym", "eus", "gle", "isl", "kaz", "lug", "mon", "mri", "msa", "nno", "som", "sot",
    "sqi", "swa", "tsn", "tso", "xho", "yor",
];

/// A detection must be at least this confident (0–1) to be returned; below
/// it the answer is `None` ("unsure"), as the WIT allows.
const MIN_CONFIDENCE: f64 = 0.5;

/// The language of `text` among `candidates` (ISO 639-3 codes), as the
/// candidate's code; `None` when none matches with confidence.
///
/// # Errors
/// [`CsiError::Request`] naming a candidate that is not an ISO 639-3 code
/// of the WIT's list.
pub fn select(text: &str, candidates: &[String]) -> Result<Option<String>, CsiError> {
    let mut allowed = Vec::new();
    for code in candidates {
        match lang_of(code) {
            Some(lang) => allowed.push((lang, code)),
            None if UNDETECTABLE.contains(&code.as_str()) => {}
            None => {
                return Err(CsiError::Request(format!(
                    "language: '{code}' is not an ISO 639-3 code of the pharia:skill language list"
                )))
            }
        }
    }
    if allowed.is_empty() {
        return Ok(None);
    }
    let detector = Detector::with_allowlist(allowed.iter().map(|(l, _)| *l).collect());
    Ok(detector
        .detect(text)
        .filter(|info| info.confidence() >= MIN_CONFIDENCE)
        .and_then(|info| {
            allowed
                .iter()
                .find(|(l, _)| *l == info.lang())
                .map(|(_, code)| (*code).clone())
        }))
}

/// whatlang's language for a WIT code.
fn lang_of(code: &str) -> Option<Lang> {
    match code {
        "zho" => Some(Lang::Cmn),
        "fas" => Some(Lang::Pes),
        // whatlang's own codes outside the WIT's list are not accepted.
        "cmn" | "pes" | "aka" | "amh" | "jav" | "kan" | "khm" | "mal" | "mya" | "nep" | "ori"
        | "sin" | "tuk" | "uzb" | "yid" => None,
        other => Lang::from_code(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn picks_the_language_among_the_candidates() {
        let german = "Der schnelle braune Fuchs springt über den faulen Hund und läuft davon.";
        let english = "The quick brown fox jumps over the lazy dog and runs away into the woods.";
        let all = codes(&["eng", "deu", "fra"]);
        assert_eq!(select(german, &all).unwrap().as_deref(), Some("deu"));
        assert_eq!(select(english, &all).unwrap().as_deref(), Some("eng"));
        assert_eq!(
            select("你好，世界。今天天气很好。", &codes(&["zho", "jpn"]))
                .unwrap()
                .as_deref(),
            Some("zho")
        );
    }

    #[test]
    fn an_unsure_or_empty_choice_is_none() {
        assert_eq!(select("ok", &codes(&["eng", "deu"])).unwrap(), None);
        assert_eq!(select("hello there", &[]).unwrap(), None);
        assert_eq!(select("hello there", &codes(&["swa"])).unwrap(), None);
    }

    #[test]
    fn an_unknown_code_is_named() {
        let err = select("hello", &codes(&["eng", "english"])).unwrap_err();
        assert!(err.to_string().contains("'english'"), "{err}");
        assert!(select("hello", &codes(&["cmn"])).is_err());
    }
}
