//! Text plumbing between token pieces and the reply: stateful UTF-8 decoding and
//! stop-string filtering. Both are pure and unit-tested without a model.

/// Turns a stream of byte pieces into text, holding back incomplete characters.
///
/// A token's piece can end inside a multi-byte UTF-8 character (byte-fallback tokens
/// such as `<0xE2>` carry one byte each), so decoding pieces one by one would produce
/// replacement characters. This keeps the incomplete tail until the next piece
/// completes it; invalid sequences become U+FFFD.
pub struct Utf8Stream {
    // Without BOM handling: a reply that starts with U+FEFF must keep it.
    decoder: encoding_rs::Decoder,
}

impl std::fmt::Debug for Utf8Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Utf8Stream").finish_non_exhaustive()
    }
}

impl Default for Utf8Stream {
    fn default() -> Self {
        Self::new()
    }
}

impl Utf8Stream {
    /// A decoder with nothing held back.
    #[must_use]
    pub fn new() -> Self {
        Self {
            decoder: encoding_rs::UTF_8.new_decoder_without_bom_handling(),
        }
    }

    /// Decodes `bytes` after whatever was held back; returns the complete characters.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.decode(bytes, false)
    }

    /// Ends the stream: a held-back incomplete character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        self.decode(&[], true)
    }

    fn decode(&mut self, bytes: &[u8], last: bool) -> String {
        let capacity = self
            .decoder
            .max_utf8_buffer_length(bytes.len())
            .unwrap_or(bytes.len() * 3 + 16);
        let mut out = String::with_capacity(capacity);
        // With enough capacity the decoder consumes all input in one call.
        let (_, read, _) = self.decoder.decode_to_string(bytes, &mut out, last);
        debug_assert_eq!(read, bytes.len());
        out
    }
}

/// Cuts the reply at the first occurrence of any stop string, which is not emitted.
///
/// Text that might be the start of a stop string is held back until it is known
/// not to be; [`StopFilter::finish`] releases it at the end.
#[derive(Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

/// Result of [`StopFilter::push`].
#[derive(Debug, PartialEq, Eq)]
pub struct StopStep {
    /// Text that is now safe to emit.
    pub emit: String,
    /// A stop string was found; `emit` ends right before it and the reply is over.
    pub stopped: bool,
}

impl StopFilter {
    /// A filter for these stop strings; empty strings are ignored.
    #[must_use]
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds decoded text.
    pub fn push(&mut self, text: &str) -> StopStep {
        self.pending.push_str(text);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|stop| self.pending.find(stop.as_str()))
            .min()
        {
            let emit = self.pending[..pos].to_owned();
            self.pending.clear();
            return StopStep {
                emit,
                stopped: true,
            };
        }
        let hold = self.held_back_len();
        let cut = self.pending.len() - hold;
        let emit = self.pending[..cut].to_owned();
        self.pending.drain(..cut);
        StopStep {
            emit,
            stopped: false,
        }
    }

    /// Releases text held back as a possible stop-string prefix.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop.
    fn held_back_len(&self) -> usize {
        let p = &self.pending;
        (1..=p.len())
            .rev()
            .filter(|&n| p.is_char_boundary(p.len() - n))
            .find(|&n| {
                let tail = &p[p.len() - n..];
                self.stops
                    .iter()
                    .any(|s| s.len() > n && s.starts_with(tail))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_multibyte_characters_are_held_back_until_complete() {
        let text = "a€b🙂";
        let bytes = text.as_bytes();
        let mut s = Utf8Stream::new();
        // Feed one byte at a time: nothing incomplete may leak out.
        let mut out = String::new();
        let mut emitted_after_each = Vec::new();
        for b in bytes {
            let piece = s.push(&[*b]);
            emitted_after_each.push(piece.clone());
            out.push_str(&piece);
        }
        out.push_str(&s.finish());
        assert_eq!(out, text);
        assert!(!out.contains('\u{FFFD}'));
        // "€" is 3 bytes: the first two pushes of it produce nothing.
        assert_eq!(emitted_after_each[1], "");
        assert_eq!(emitted_after_each[2], "");
        assert_eq!(emitted_after_each[3], "€");
    }

    #[test]
    fn a_leading_bom_is_kept_and_a_dangling_byte_becomes_replacement() {
        let mut s = Utf8Stream::new();
        assert_eq!(s.push("\u{FEFF}x".as_bytes()), "\u{FEFF}x");
        assert_eq!(s.push(&[0xE2, 0x82]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = Utf8Stream::new();
        assert_eq!(s.push(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| (*s).to_owned()).collect();
        let mut f = StopFilter::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let step = f.push(p);
            out.push_str(&step.emit);
            if step.stopped {
                return (out, true);
            }
        }
        out.push_str(&f.finish());
        (out, false)
    }

    #[test]
    fn stop_string_split_across_pieces_is_not_emitted() {
        assert_eq!(
            run(&["STOP"], &["hello S", "T", "OP and more"]),
            ("hello ".to_owned(), true)
        );
    }

    #[test]
    fn a_false_start_is_released() {
        assert_eq!(
            run(&["STOP"], &["a ST", "ART b"]),
            ("a START b".to_owned(), false)
        );
    }

    #[test]
    fn held_back_prefix_is_released_at_the_end() {
        assert_eq!(run(&["STOP"], &["abc ST"]), ("abc ST".to_owned(), false));
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        assert_eq!(run(&["zz", "b"], &["aab zz"]), ("aa".to_owned(), true));
    }

    #[test]
    fn text_is_emitted_as_soon_as_it_cannot_start_a_stop() {
        let mut f = StopFilter::new(&["\n\nUser:".to_owned()]);
        assert_eq!(f.push("Hi there").emit, "Hi there");
        assert_eq!(f.push("\n").emit, "");
        assert_eq!(f.push("x").emit, "\nx");
    }

    #[test]
    fn multibyte_text_next_to_stops_keeps_char_boundaries() {
        assert_eq!(run(&["é!"], &["café", "!"]), ("caf".to_owned(), true));
        assert_eq!(run(&["🙂x"], &["a🙂", "y"]), ("a🙂y".to_owned(), false));
    }

    #[test]
    fn no_stops_means_pass_through() {
        assert_eq!(run(&[""], &["a", "b"]), ("ab".to_owned(), false));
    }
}
