//! Deterministic random weights: one generator per tensor, seeded by the
//! model's seed and the tensor's name.

/// SplitMix64: a tiny, fast, well-mixed generator; good enough for random weights.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-1, 1)`.
    fn next_sym(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Seeds one tensor's generator from the model seed and the tensor name, so that a
/// tensor's values do not depend on the order tensors are written in.
fn tensor_rng(seed: u64, name: &str) -> SplitMix64 {
    // FNV-1a over the name, mixed with the seed.
    let mut h: u64 = 0xCBF2_9CE4_8422_2325 ^ seed;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    SplitMix64(h)
}

/// Fills with uniform values of standard deviation `std`.
pub(super) fn fill_random(
    seed: u64,
    name: &str,
    std: f32,
) -> impl FnOnce(&mut [f32]) + Send + 'static {
    let mut rng = tensor_rng(seed, name);
    // A uniform on [-a, a) has standard deviation a / sqrt(3).
    let scale = std * 3f32.sqrt();
    move |out| out.iter_mut().for_each(|x| *x = rng.next_sym() * scale)
}
