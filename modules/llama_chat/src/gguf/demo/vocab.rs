//! The demo models' vocabulary: llama.cpp's SentencePiece flavour, with
//! words a reply is made of, and the output-row bias that keeps control
//! tokens out of replies and end-of-generation tokens rare.

/// Token type ids of `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const BYTE: i32 = 6;
}

/// How a token's output row is built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Row {
    /// Random weights: a normal piece.
    Random,
    /// Reads only the constant dimension, scaled by this bias.
    Biased(f32),
}

/// Logit offset (before the ~1.5 scale) for control and byte tokens.
const SUPPRESSED_BIAS: f32 = -20.0;
const WORDS: &[&str] = &[
    "the", "a", "an", "and", "or", "but", "is", "are", "was", "be", "to", "of", "in", "on", "at",
    "for", "with", "as", "by", "from", "that", "this", "it", "you", "we", "they", "I", "not",
    "can", "will", "would", "should", "about", "there", "here", "what", "when", "where", "which",
    "who", "how", "why", "all", "some", "more", "most", "very", "one", "two", "three", "many",
    "time", "day", "year", "world", "way", "thing", "people", "model", "answer", "question",
    "light", "star", "planet", "sun", "moon", "water", "river", "stone", "tree", "cloud", "music",
    "story", "idea", "number", "system", "server", "module", "token", "small", "large", "quick",
    "quiet", "bright", "warm", "cold", "new", "old", "good", "simple", "random", "think", "know",
    "see", "make", "find", "give", "tell", "help", "say", "go", "come", "run", "read", "write",
    "Hello", "Yes", "No", "Perhaps", "Indeed",
];

const EXTRA_CHARS: &[&str] = &["é", "ü", "ß", "—", "…", "’", "日", "本", "🙂"];

/// The demo vocabulary, one entry per token id in each list.
pub(super) struct Vocab {
    /// The pieces, `▁` for a leading space (SentencePiece's convention).
    pub(super) tokens: Vec<String>,
    /// SentencePiece merge scores: higher merges first.
    pub(super) scores: Vec<f32>,
    /// [`token_type`] ids.
    pub(super) types: Vec<i32>,
    /// How each token's output row is built.
    pub(super) rows: Vec<Row>,
}

/// The vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, ChatML's
/// two control tokens, single characters, and every prefix of a few
/// hundred common words (so that SentencePiece can merge up to each word).
/// End-of-generation tokens get output rows biased by `eog_bias`, control
/// and byte tokens rows biased far down.
pub(super) fn demo_vocab(eog_bias: f32) -> Vocab {
    let mut v = Vocab {
        tokens: Vec::new(),
        scores: Vec::new(),
        types: Vec::new(),
        rows: Vec::new(),
    };
    let push = |v: &mut Vocab, text: String, score: f32, ty: i32, row: Row| {
        if !v.tokens.contains(&text) {
            v.tokens.push(text);
            v.scores.push(score);
            v.types.push(ty);
            v.rows.push(row);
        }
    };
    let suppressed = Row::Biased(SUPPRESSED_BIAS);
    push(&mut v, "<unk>".into(), 0.0, token_type::UNKNOWN, suppressed);
    push(&mut v, "<s>".into(), 0.0, token_type::CONTROL, suppressed);
    push(
        &mut v,
        "</s>".into(),
        0.0,
        token_type::CONTROL,
        Row::Biased(eog_bias),
    );
    for b in 0..=255u8 {
        push(
            &mut v,
            format!("<0x{b:02X}>"),
            0.0,
            token_type::BYTE,
            suppressed,
        );
    }
    push(
        &mut v,
        "<|im_start|>".into(),
        0.0,
        token_type::CONTROL,
        suppressed,
    );
    push(
        &mut v,
        "<|im_end|>".into(),
        0.0,
        token_type::CONTROL,
        Row::Biased(eog_bias),
    );
    // Single characters score low, longer pieces higher: SentencePiece merges the
    // highest-scoring adjacent pair first.
    push(&mut v, "▁".into(), -100.0, token_type::NORMAL, Row::Random);
    for c in 0x21u8..=0x7E {
        push(
            &mut v,
            char::from(c).to_string(),
            -100.0,
            token_type::NORMAL,
            Row::Random,
        );
    }
    for c in EXTRA_CHARS {
        push(
            &mut v,
            (*c).to_owned(),
            -100.0,
            token_type::NORMAL,
            Row::Random,
        );
    }
    for word in WORDS {
        let piece = format!("▁{word}");
        let chars: Vec<(usize, char)> = piece.char_indices().collect();
        for (i, _) in chars.iter().enumerate().skip(1) {
            let end = chars.get(i + 1).map_or(piece.len(), |(pos, _)| *pos);
            let prefix = &piece[..end];
            push(
                &mut v,
                prefix.to_owned(),
                -100.0 + i as f32,
                token_type::NORMAL,
                Row::Random,
            );
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_vocab_has_specials_bytes_and_reachable_words() {
        let v = demo_vocab(-20.0);
        assert_eq!(&v.tokens[..3], ["<unk>", "<s>", "</s>"]);
        assert_eq!(v.tokens[3], "<0x00>");
        assert_eq!(v.tokens[258], "<0xFF>");
        let im_end = v.tokens.iter().position(|t| t == "<|im_end|>").unwrap();
        assert_eq!(v.types[im_end], token_type::CONTROL);
        assert_eq!(v.rows[im_end], Row::Biased(-20.0));
        // Every prefix of "▁the" exists so SentencePiece can merge up to it.
        for p in ["▁t", "▁th", "▁the"] {
            assert!(v.tokens.iter().any(|t| t == p), "missing {p}");
        }
        let unique: std::collections::HashSet<_> = v.tokens.iter().collect();
        assert_eq!(unique.len(), v.tokens.len(), "duplicate pieces");
    }
}
