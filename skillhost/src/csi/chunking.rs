//! CSI `chunking`: a text cut into chunks of at most `max-tokens` tokens of
//! a model, consecutive chunks sharing up to `overlap` tokens, by
//! `text-splitter` (which cuts at the largest semantic unit that fits:
//! paragraphs, then sentences, then words).
//!
//! Tokens are counted with the model's own tokenizer: the backend gives the
//! byte offset where each token of the whole text starts (one call per
//! text), and a chunk counts the tokens that start inside it.

use text_splitter::{ChunkConfig, ChunkSizer, TextSplitter};

use crate::error::CsiError;

/// Chunks of `text` of at most `max_tokens` tokens, overlapping by up to
/// `overlap`, where `token_starts` are the byte offsets at which the
/// model's tokens of `text` start, ascending.
///
/// # Errors
/// As [`check`].
pub fn chunk(
    text: &str,
    token_starts: &[usize],
    max_tokens: u32,
    overlap: u32,
) -> Result<Vec<String>, CsiError> {
    check(max_tokens, overlap)?;
    let sizer = TokenSizer {
        text,
        starts: token_starts,
    };
    let config = ChunkConfig::new(max_tokens as usize)
        .with_overlap(overlap as usize)
        .map_err(|e| CsiError::Request(format!("chunking: {e}")))?
        .with_sizer(sizer);
    Ok(TextSplitter::new(config)
        .chunks(text)
        .map(str::to_owned)
        .collect())
}

/// Checks the parameters of a chunk request.
///
/// # Errors
/// [`CsiError::Request`] when `max_tokens` is 0 or `overlap` is not less
/// than it.
pub fn check(max_tokens: u32, overlap: u32) -> Result<(), CsiError> {
    if max_tokens == 0 {
        return Err(CsiError::Request(
            "chunking: max-tokens must be at least 1".into(),
        ));
    }
    if overlap >= max_tokens {
        return Err(CsiError::Request(format!(
            "chunking: overlap ({overlap}) must be less than max-tokens ({max_tokens})"
        )));
    }
    Ok(())
}

/// Counts a chunk's tokens from the token offsets of the whole text.
struct TokenSizer<'a> {
    text: &'a str,
    starts: &'a [usize],
}

impl ChunkSizer for TokenSizer<'_> {
    fn size(&self, chunk: &str) -> usize {
        // text-splitter sizes slices of the text it splits; their place in
        // it says which tokens they hold.
        let base = self.text.as_ptr() as usize;
        let at = chunk.as_ptr() as usize;
        match at.checked_sub(base) {
            Some(start) if start + chunk.len() <= self.text.len() => {
                let end = start + chunk.len();
                let first = self.starts.partition_point(|&s| s < start);
                let last = self.starts.partition_point(|&s| s < end);
                // A chunk that begins inside a token (after its leading
                // space, say) holds part of it.
                let partial =
                    usize::from(first > 0 && start < end && self.starts.get(first) != Some(&start));
                last - first + partial
            }
            // Not a slice of the text: one token per character, an upper
            // bound for every tokenizer that has single-character tokens.
            _ => chunk.chars().count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per word (at its first letter) as a stand-in tokenizer.
    fn word_starts(text: &str) -> Vec<usize> {
        let mut starts = Vec::new();
        let mut in_word = false;
        for (i, c) in text.char_indices() {
            if !c.is_whitespace() && !in_word {
                starts.push(i);
            }
            in_word = !c.is_whitespace();
        }
        starts
    }

    #[test]
    fn chunks_hold_at_most_max_tokens_and_overlap() {
        let text = (1..=40)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let chunks = chunk(&text, &word_starts(&text), 10, 3).unwrap();
        assert!(chunks.len() >= 4, "{chunks:?}");
        for c in &chunks {
            assert!(c.split_whitespace().count() <= 10, "{c}");
        }
        // Consecutive chunks share up to 3 edge words.
        let first: Vec<&str> = chunks[0].split_whitespace().collect();
        let second: Vec<&str> = chunks[1].split_whitespace().collect();
        assert!(first.ends_with(&second[..3]), "{first:?} / {second:?}");
        // Nothing is lost: every word is in some chunk.
        for i in 1..=40 {
            let w = format!("w{i}");
            assert!(
                chunks.iter().any(|c| c.split_whitespace().any(|x| x == w)),
                "{w}"
            );
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = chunk("a b c", &[0, 2, 4], 4, 4).unwrap_err();
        assert!(err.to_string().contains("overlap (4)"), "{err}");
        assert!(chunk("a b c", &[0, 2, 4], 0, 0).is_err());
    }

    #[test]
    fn empty_text_has_no_chunks() {
        assert!(chunk("", &[], 8, 0).unwrap().is_empty());
    }
}
