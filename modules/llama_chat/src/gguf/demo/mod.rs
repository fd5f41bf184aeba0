//! Random-weight demo models: llama-architecture GGUF files that llama.cpp loads
//! and runs but that know nothing.
//!
//! [`write_demo_model`] builds one: its weights are random (deterministic from a
//! seed), so it answers with word salad. It exists so that the module, its tests and
//! a benchmark can run without downloading gigabytes. See [`DemoModelSpec`] for its
//! vocabulary and the trick that keeps end-of-generation tokens from ending replies
//! early.

use std::path::{Path, PathBuf};

use super::{
    quantize, GgufError, GgufWriter, MetaValue, QuantizeType, ALIGNMENT, LLAMA_FTYPE_ALL_F32,
};

mod random;
mod vocab;

use random::fill_random;
use vocab::{demo_vocab, Row};

/// Tensor storage of a generated demo model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoQuantization {
    /// Plain 32-bit floats, as written by [`GgufWriter`].
    F32,
    /// llama.cpp's 8-bit block quantization (written as F32, then [`quantize`]d).
    Q8_0,
}

/// Shape and seed of a random-weight llama-architecture demo model.
///
/// The vocabulary is llama.cpp's SentencePiece flavour (`tokenizer.ggml.model =
/// "llama"`): `<unk>`, `<s>`, `</s>`, the 256 byte-fallback tokens `<0x00>`..`<0xFF>`,
/// the ChatML control tokens `<|im_start|>` and `<|im_end|>`, then `▁` (the SentencePiece
/// space), printable ASCII, a few multi-byte characters and some English words (with all
/// their prefixes, so that SentencePiece's pairwise merges can reach them). The chat
/// template is ChatML, which llama.cpp's built-in detector recognises.
///
/// Random weights give random logits; to keep end-of-generation tokens from ending
/// replies after a few tokens, dimension 0 of the residual stream is held at a positive
/// constant (every embedding has it, no layer writes to it), and the output row of each
/// end-of-generation token reads only that dimension, scaled by [`Self::eog_bias`]. Its
/// logit is then about `eog_bias * 1.5`: strongly negative means never, strongly
/// positive means at once. Control and byte tokens get the same treatment with a
/// fixed negative bias so that replies are made of readable pieces.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoModelSpec {
    /// `general.name` in the file.
    pub name: String,
    /// Embedding width (`llama.embedding_length`); a multiple of `n_head` and of 32.
    pub n_embd: u32,
    /// Number of transformer blocks (`llama.block_count`).
    pub n_layer: u32,
    /// Attention heads (`llama.attention.head_count`).
    pub n_head: u32,
    /// Key/value heads (`llama.attention.head_count_kv`); divides `n_head`.
    pub n_head_kv: u32,
    /// Feed-forward width (`llama.feed_forward_length`); a multiple of 32.
    pub n_ff: u32,
    /// Training context length (`llama.context_length`), in tokens.
    pub context_length: u32,
    /// Seed of the weights; the same spec always gives the same file.
    pub seed: u64,
    /// Logit offset of the end-of-generation tokens (`</s>`, `<|im_end|>`); see above.
    pub eog_bias: f32,
    /// Tensor storage.
    pub quantization: DemoQuantization,
    /// `tokenizer.chat_template`; `None` leaves the key out. Presets use
    /// [`CHATML_TEMPLATE`].
    pub chat_template: Option<String>,
}

impl DemoModelSpec {
    /// 64 embd × 2 layers, 1024-token context, F32, about 0.6 MB: for tests and the
    /// out-of-the-box demo. Generates thousands of tokens per second on one core and
    /// never emits an end-of-generation token.
    #[must_use]
    pub fn tiny() -> Self {
        Self {
            name: "modhost demo tiny (random weights)".to_owned(),
            n_embd: 64,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 4,
            n_ff: 128,
            context_length: 1024,
            seed: 42,
            eog_bias: -20.0,
            quantization: DemoQuantization::F32,
            chat_template: Some(CHATML_TEMPLATE.to_owned()),
        }
    }

    /// About 0.54 billion parameters (2048 embd × 12 layers, grouped-query attention
    /// 16/4 heads, FFN 5632), Q8_0 (about 0.6 GB; 2.2 GB of scratch space while
    /// writing): memory-bound like a real small chat model, for benchmarks.
    #[must_use]
    pub fn bench() -> Self {
        Self {
            name: "modhost demo bench (random weights)".to_owned(),
            n_embd: 2048,
            n_layer: 12,
            n_head: 16,
            n_head_kv: 4,
            n_ff: 5632,
            context_length: 4096,
            seed: 42,
            eog_bias: -20.0,
            quantization: DemoQuantization::Q8_0,
            chat_template: Some(CHATML_TEMPLATE.to_owned()),
        }
    }

    /// 512 embd × 8 layers, F32, about 110 MB: a few hundred tokens per second on
    /// one core, so that tests and demos can watch a reply grow and stop it midway.
    #[must_use]
    pub fn small() -> Self {
        Self {
            name: "modhost demo small (random weights)".to_owned(),
            n_embd: 512,
            n_layer: 8,
            n_head: 8,
            n_head_kv: 8,
            n_ff: 1536,
            ..Self::tiny()
        }
    }

    /// The named preset: `tiny`, `small` or `bench`.
    #[must_use]
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "tiny" => Some(Self::tiny()),
            "small" => Some(Self::small()),
            "bench" => Some(Self::bench()),
            _ => None,
        }
    }

    fn validate(&self) -> Result<(), GgufError> {
        let bad = |m: String| Err(GgufError::InvalidSpec(m));
        if self.n_embd == 0 || self.n_layer == 0 || self.n_head == 0 || self.n_ff == 0 {
            return bad("n_embd, n_layer, n_head and n_ff must be positive".into());
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_head {} does not divide n_embd {}",
                self.n_head, self.n_embd
            ));
        }
        if self.n_head_kv == 0 || !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad(format!(
                "n_head_kv {} does not divide n_head {}",
                self.n_head_kv, self.n_head
            ));
        }
        if !(self.n_embd / self.n_head).is_multiple_of(2) {
            return bad("the head size must be even (rotary embedding)".into());
        }
        if self.quantization == DemoQuantization::Q8_0
            && (!self.n_embd.is_multiple_of(32) || !self.n_ff.is_multiple_of(32))
        {
            return bad("Q8_0 needs n_embd and n_ff to be multiples of 32".into());
        }
        if self.context_length < 16 {
            return bad("context_length must be at least 16".into());
        }
        Ok(())
    }
}

/// Value of residual dimension 0 for every token (the "constant feature").
const ANCHOR: f32 = 2.0;
/// Standard deviation of the logits of normal pieces.
const LOGIT_STD: f32 = 2.5;

/// ChatML, the template of `tokenizer.chat_template` in demo models.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Writes a random-weight llama model (see [`DemoModelSpec`]) to `path`.
///
/// Takes milliseconds for [`DemoModelSpec::tiny`]. For [`DemoQuantization::Q8_0`] an
/// F32 file is written next to `path` first (`<path>.f32.tmp`), quantized by
/// llama.cpp, then removed.
///
/// # Errors
/// [`GgufError::InvalidSpec`] for an unusable shape, [`GgufError::Io`] when the file
/// cannot be written, [`GgufError::Quantize`] when llama.cpp's quantizer fails.
pub fn write_demo_model(path: &Path, spec: &DemoModelSpec) -> Result<(), GgufError> {
    spec.validate()?;
    match spec.quantization {
        DemoQuantization::F32 => demo_writer(spec).write(path),
        DemoQuantization::Q8_0 => {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".f32.tmp");
            let tmp = PathBuf::from(tmp);
            demo_writer(spec).write(&tmp)?;
            let result = quantize(&tmp, path, QuantizeType::Q8_0);
            // Best effort: a leftover scratch file is only wasted disk space.
            let _ = std::fs::remove_file(&tmp);
            result
        }
    }
}

fn demo_writer(spec: &DemoModelSpec) -> GgufWriter {
    let vocab = demo_vocab(spec.eog_bias);
    let n_vocab = vocab.tokens.len() as u64;
    let n_embd = u64::from(spec.n_embd);
    let n_ff = u64::from(spec.n_ff);
    let head_dim = spec.n_embd / spec.n_head;
    let n_embd_kv = u64::from(head_dim * spec.n_head_kv);
    let seed = spec.seed;

    let mut w = GgufWriter::new();
    let arch = "llama";
    w.add_kv("general.architecture", MetaValue::Str(arch.into()));
    w.add_kv("general.name", MetaValue::Str(spec.name.clone()));
    w.add_kv("general.file_type", MetaValue::U32(LLAMA_FTYPE_ALL_F32));
    w.add_kv("general.alignment", MetaValue::U32(ALIGNMENT as u32));
    w.add_kv(format!("{arch}.vocab_size"), MetaValue::U32(n_vocab as u32));
    w.add_kv(
        format!("{arch}.context_length"),
        MetaValue::U32(spec.context_length),
    );
    w.add_kv(
        format!("{arch}.embedding_length"),
        MetaValue::U32(spec.n_embd),
    );
    w.add_kv(format!("{arch}.block_count"), MetaValue::U32(spec.n_layer));
    w.add_kv(
        format!("{arch}.feed_forward_length"),
        MetaValue::U32(spec.n_ff),
    );
    w.add_kv(
        format!("{arch}.attention.head_count"),
        MetaValue::U32(spec.n_head),
    );
    w.add_kv(
        format!("{arch}.attention.head_count_kv"),
        MetaValue::U32(spec.n_head_kv),
    );
    w.add_kv(
        format!("{arch}.rope.dimension_count"),
        MetaValue::U32(head_dim),
    );
    w.add_kv(format!("{arch}.rope.freq_base"), MetaValue::F32(10_000.0));
    w.add_kv(
        format!("{arch}.attention.layer_norm_rms_epsilon"),
        MetaValue::F32(1e-5),
    );
    w.add_kv("tokenizer.ggml.model", MetaValue::Str("llama".into()));
    w.add_kv(
        "tokenizer.ggml.tokens",
        MetaValue::StrArray(vocab.tokens.clone()),
    );
    w.add_kv(
        "tokenizer.ggml.scores",
        MetaValue::F32Array(vocab.scores.clone()),
    );
    w.add_kv(
        "tokenizer.ggml.token_type",
        MetaValue::I32Array(vocab.types.clone()),
    );
    w.add_kv("tokenizer.ggml.unknown_token_id", MetaValue::U32(0));
    w.add_kv("tokenizer.ggml.bos_token_id", MetaValue::U32(1));
    w.add_kv("tokenizer.ggml.eos_token_id", MetaValue::U32(2));
    w.add_kv("tokenizer.ggml.add_bos_token", MetaValue::Bool(true));
    w.add_kv("tokenizer.ggml.add_eos_token", MetaValue::Bool(false));
    if let Some(template) = &spec.chat_template {
        w.add_kv("tokenizer.chat_template", MetaValue::Str(template.clone()));
    }

    // token_embd [n_embd, n_vocab]: random, with dimension 0 pinned to ANCHOR.
    let embd_fill = fill_random(seed, "token_embd.weight", 1.0);
    w.add_tensor_with("token_embd.weight", &[n_embd, n_vocab], move |out| {
        embd_fill(out);
        out.chunks_mut(n_embd as usize)
            .for_each(|row| row[0] = ANCHOR);
    });

    let ones = |out: &mut [f32]| out.fill(1.0);
    let in_std = |n_in: u64| 1.0 / (n_in as f32).sqrt();
    for layer in 0..spec.n_layer {
        let t = |s: &str| format!("blk.{layer}.{s}.weight");
        w.add_tensor_with(t("attn_norm"), &[n_embd], ones);
        for (name, n_out) in [
            ("attn_q", n_embd),
            ("attn_k", n_embd_kv),
            ("attn_v", n_embd_kv),
        ] {
            let name = t(name);
            let fill = fill_random(seed, &name, in_std(n_embd));
            w.add_tensor_with(name, &[n_embd, n_out], fill);
        }
        // The projections back into the residual stream leave dimension 0 alone
        // (row 0 is zero) so the constant feature survives every block.
        for (name, n_in) in [("attn_output", n_embd), ("ffn_down", n_ff)] {
            let name = t(name);
            let fill = fill_random(seed, &name, in_std(n_in));
            w.add_tensor_with(name, &[n_in, n_embd], move |out| {
                fill(out);
                out[..n_in as usize].fill(0.0);
            });
        }
        w.add_tensor_with(t("ffn_norm"), &[n_embd], ones);
        for name in ["ffn_gate", "ffn_up"] {
            let name = t(name);
            let fill = fill_random(seed, &name, in_std(n_embd));
            w.add_tensor_with(name, &[n_embd, n_ff], fill);
        }
    }
    w.add_tensor_with("output_norm.weight", &[n_embd], ones);

    // output [n_embd, n_vocab]: random rows for pieces; biased rows read dimension 0 only.
    let rows = vocab.rows;
    let out_fill = fill_random(seed, "output.weight", LOGIT_STD * in_std(n_embd));
    w.add_tensor_with("output.weight", &[n_embd, n_vocab], move |out| {
        out_fill(out);
        for (row, kind) in out.chunks_mut(n_embd as usize).zip(&rows) {
            match kind {
                Row::Random => row[0] = 0.0,
                Row::Biased(bias) => {
                    row.fill(0.0);
                    row[0] = *bias;
                }
            }
        }
    });
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_spec_is_rejected() {
        let spec = DemoModelSpec {
            n_head: 3,
            ..DemoModelSpec::tiny()
        };
        let dir = tempfile::tempdir().unwrap();
        let err = write_demo_model(&dir.path().join("x.gguf"), &spec).unwrap_err();
        assert!(matches!(err, GgufError::InvalidSpec(_)), "{err}");
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        write_demo_model(&a, &DemoModelSpec::tiny()).unwrap();
        write_demo_model(&b, &DemoModelSpec::tiny()).unwrap();
        let other = DemoModelSpec {
            seed: 7,
            ..DemoModelSpec::tiny()
        };
        write_demo_model(&c, &other).unwrap();
        let read = |p: &Path| std::fs::read(p).unwrap();
        assert_eq!(read(&a), read(&b));
        assert_ne!(read(&a), read(&c));
    }
}
