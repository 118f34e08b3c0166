//! Seeded, dependency-free randomness for the suite's bounded fuzz loops.

/// xorshift64*: deterministic for a seed, no dependencies.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (0 is replaced: xorshift needs a
    /// non-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One of `items` (non-empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// How many iterations a fuzz loop runs: `MSB_FUZZ_ITERS`, else `default`.
pub fn iterations(default: usize) -> usize {
    std::env::var("MSB_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` bytes that do not compress (a fixed function of `seed`).
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// `len` bytes that compress like a tar of many different files (a fixed
/// function of `seed`): each file, 16-96 KiB, is text over a vocabulary of
/// its own (words repeat within it, rarely across files) or, one in eight,
/// noise.
///
/// What a file reaches back to is mostly itself, as in real layers, so a
/// deflate decoder started in the middle of the stream without the 32 KiB
/// before it soon stops depending on them. Text over one small vocabulary
/// never does: every word copies the one before it, back to the start.
pub fn files_like(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut data = Vec::with_capacity(len + (96 << 10));
    while data.len() < len {
        let size = (16 << 10) + rng.below(80 << 10);
        if rng.below(8) == 0 {
            data.extend_from_slice(&noise(size, rng.next_u64()));
            continue;
        }
        let vocabulary: Vec<Vec<u8>> = (0..20 + rng.below(200))
            .map(|_| {
                (0..2 + rng.below(10))
                    .map(|_| b'a' + rng.below(26) as u8)
                    .collect()
            })
            .collect();
        let end = data.len() + size;
        while data.len() < end {
            data.extend_from_slice(&vocabulary[rng.below(vocabulary.len())]);
            data.push(rng.pick(b"   \n./_-"));
            if rng.below(16) == 0 {
                data.extend_from_slice(rng.below(100_000).to_string().as_bytes());
            }
        }
    }
    data.truncate(len);
    data
}
