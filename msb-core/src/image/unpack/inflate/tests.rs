//! The inflater against zlib-rs (through flate2): the same output for
//! every valid stream, cut anywhere, and an error wherever zlib errs.

use std::io::{self, Read, Write};

use flate2::{Compression, Decompress, FlushDecompress, Status};
use test_utils::fuzz::{Rng, iterations, noise};

use super::{Inflater, Input, Trickle};

/// Inflates `stream` with reads of `step` bytes into a buffer of `in_cap`,
/// `out_step` bytes of output a call, at most `limit` bytes. Returns the
/// output and the input bytes left after the stream.
fn ours(
    stream: &[u8],
    step: usize,
    in_cap: usize,
    out_step: usize,
    limit: usize,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut input = Input::new(Trickle::new(stream, step), in_cap);
    let mut inflater = Inflater::new();
    let mut out = Vec::new();
    let mut chunk = vec![0; out_step];
    loop {
        let (n, done) = inflater.inflate(&mut input, &mut chunk)?;
        out.extend_from_slice(&chunk[..n]);
        assert_eq!(inflater.total_out(), out.len() as u64);
        if done {
            let mut rest = input.available().to_vec();
            input.src.read_to_end(&mut rest)?;
            return Ok((out, rest));
        }
        assert!(n > 0, "no progress before the end");
        if out.len() > limit {
            return Err(io::Error::other("over the limit"));
        }
    }
}

/// zlib-rs: the output if the stream ends within `limit` bytes.
fn zlib(stream: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(limit + 1);
    match d.decompress_vec(stream, &mut out, FlushDecompress::Finish) {
        Ok(Status::StreamEnd) if out.len() <= limit => Some(out),
        _ => None,
    }
}

fn deflate(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::new(level));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Data deflate compresses in every way: text, runs at every short
/// distance, long matches, noise, and a mix of them.
fn corpus() -> Vec<Vec<u8>> {
    let words = [
        "usr", "share", "doc", "lib", "x86_64", "linux", "gnu", "#include", "the", "of", "deb",
    ];
    let mut rng = Rng::new(7);
    let mut text = Vec::new();
    while text.len() < 300_000 {
        text.extend_from_slice(rng.pick(&words).as_bytes());
        text.push(rng.pick(b" /\n."));
    }
    let mut runs = Vec::new();
    for dist in 1..=12 {
        let unit: Vec<u8> = (0..dist).map(|i| b'a' + i as u8).collect();
        for _ in 0..(2000 / dist) {
            runs.extend_from_slice(&unit);
        }
        runs.extend_from_slice(&noise(37, dist as u64));
    }
    let mut mixed = noise(40_000, 1);
    mixed.extend_from_slice(&text[..100_000]);
    mixed.extend(std::iter::repeat_n(0u8, 70_000));
    mixed.extend_from_within(1000..50_000);
    vec![
        Vec::new(),
        b"a".to_vec(),
        text,
        runs,
        noise(100_000, 2),
        vec![0; 1 << 20],
        mixed,
    ]
}

#[test]
fn every_level_and_every_boundary_gives_zlibs_output() {
    for (i, data) in corpus().iter().enumerate() {
        for level in [0, 1, 6, 9] {
            let stream = deflate(data, level);
            for (step, in_cap, out_step) in [
                (1 << 20, 128 << 10, 512 << 10),
                (1, 4096, 1),
                (7, 4096, 333),
                (4096, 4096, 65_536),
                (100_003, 8192, 300_000),
            ] {
                let (out, rest) = ours(&stream, step, in_cap, out_step, usize::MAX)
                    .unwrap_or_else(|e| panic!("data {i}, level {level}, step {step}: {e}"));
                assert!(
                    out == *data,
                    "data {i}, level {level}, step {step}, out {out_step}"
                );
                assert!(rest.is_empty());
            }
        }
    }
}

#[test]
fn the_input_is_left_at_the_first_byte_after_the_stream() {
    for data in [&b""[..], b"hello, hello, hello", &[7; 5000][..]] {
        for level in [0, 6] {
            let mut stream = deflate(data, level);
            stream.extend_from_slice(b"TRAILER!");
            for step in [1, 3, 1 << 20] {
                let (out, rest) = ours(&stream, step, 4096, 100, usize::MAX).unwrap();
                assert_eq!(out, data);
                assert_eq!(rest, b"TRAILER!");
            }
        }
    }
}

#[test]
fn a_stream_cut_anywhere_is_unexpected_eof() {
    let stream = deflate(&corpus()[2][..60_000], 6);
    for cut in (0..stream.len()).step_by(97).chain([stream.len() - 1]) {
        for step in [5, 1 << 20] {
            let err = ours(&stream[..cut], step, 4096, 4096, usize::MAX).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::UnexpectedEof,
                "cut at {cut}: {err}"
            );
        }
    }
}

#[test]
fn invalid_streams_are_invalid_data_like_zlib() {
    for (what, stream) in [
        ("block type 3", vec![0b111]),
        ("stored lengths", vec![0b001, 5, 0, 5, 0, 1, 2, 3, 4, 5]),
        // A fixed block whose first symbol is a match reaching back 1 byte
        // into nothing: length 3 is code 257 (0000001), distance 1 code 0.
        ("distance too far back", vec![0b0000_0011, 0b0000_0010, 0]),
    ] {
        assert!(zlib(&stream, 1 << 20).is_none(), "{what}: zlib decodes it");
        let err = ours(&stream, 1 << 20, 4096, 4096, usize::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}: {err}");
    }
}

/// Mutations of valid streams (bits flipped, bytes changed, spans cut,
/// repeated or swapped): wherever zlib decodes a stream, we decode the
/// same bytes, and wherever it errs, so do we.
#[test]
fn mutated_streams_decode_as_zlib_decodes_them() {
    let seed = std::env::var("MSB_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xdef1_a7e5_u64);
    let mut rng = Rng::new(seed);
    let corpus = corpus();
    let limit = 4 << 20;
    let (mut agreed_ok, mut agreed_err) = (0, 0);
    for case in 0..iterations(3000) {
        let data = &corpus[rng.below(corpus.len())];
        let start = rng.below(data.len().max(1));
        let len = rng.below(20_000).min(data.len() - start.min(data.len()));
        let level = rng.pick(&[0, 1, 2, 6, 9]);
        let mut stream = deflate(&data[start.min(data.len())..][..len], level);
        for _ in 0..1 + rng.below(3) {
            if stream.is_empty() {
                break;
            }
            let at = rng.below(stream.len());
            match rng.below(5) {
                0 => stream[at] ^= 1 << rng.below(8),
                1 => stream[at] = rng.next_u64() as u8,
                2 => stream.truncate(at),
                3 => {
                    let span = stream[at..].iter().take(rng.below(64)).copied();
                    let span: Vec<u8> = span.collect();
                    let to = rng.below(stream.len());
                    stream.splice(to..to, span);
                }
                _ => {
                    let to = rng.below(stream.len());
                    stream.swap(at, to);
                }
            }
        }
        let theirs = zlib(&stream, limit);
        let step = rng.pick(&[1, 13, 4096, 1 << 20]);
        let out_step = rng.pick(&[1, 300, 40_000, 1 << 20]);
        let mine = ours(&stream, step, 4096, out_step, limit);
        match (theirs, mine) {
            (Some(theirs), Ok((mine, _))) => {
                assert!(theirs == mine, "case {case} (seed {seed}): outputs differ");
                agreed_ok += 1;
            }
            (None, Err(_)) => agreed_err += 1,
            (Some(_), Err(e)) => panic!("case {case} (seed {seed}): zlib decodes it, we fail: {e}"),
            (None, Ok((mine, _))) if mine.len() <= limit => {
                panic!(
                    "case {case} (seed {seed}): zlib fails, we decode {} bytes",
                    mine.len()
                )
            }
            (None, Ok(_)) => {}
        }
    }
    // Both outcomes must have been exercised for the test to mean much.
    assert!(
        agreed_ok > 100 && agreed_err > 100,
        "{agreed_ok} ok, {agreed_err} errors"
    );
}

/// `MSB_INFLATE_BENCH=<gzip file> cargo test --release -p msb-core --lib
/// inflate_speed -- --ignored --nocapture`: ours against zlib-rs, in memory.
#[test]
#[ignore = "a measurement, run by hand"]
fn inflate_speed() {
    let Ok(path) = std::env::var("MSB_INFLATE_BENCH") else {
        println!("set MSB_INFLATE_BENCH to a gzip file to measure");
        return;
    };
    let gz = std::fs::read(path).unwrap();
    let body = &gz[10..]; // no optional header fields in the bench layer
    let mut chunk = vec![0u8; 512 << 10];
    let (mut best_ours, mut best_theirs) = (std::time::Duration::MAX, std::time::Duration::MAX);
    for round in 0..10 {
        let t = std::time::Instant::now();
        let mut input = Input::new(body, 128 << 10);
        let mut inflater = Inflater::new();
        let mut total = 0;
        loop {
            let (n, done) = inflater.inflate(&mut input, &mut chunk).unwrap();
            total += n;
            if done {
                break;
            }
        }
        let ours = t.elapsed();
        let t = std::time::Instant::now();
        let mut d = Decompress::new(false);
        let mut rest = body;
        loop {
            let before = d.total_in();
            let status = d
                .decompress(rest, &mut chunk, FlushDecompress::None)
                .unwrap();
            rest = &rest[(d.total_in() - before) as usize..];
            if status == Status::StreamEnd {
                break;
            }
        }
        let theirs = t.elapsed();
        assert_eq!(total as u64, d.total_out());
        println!("round {round}: ours {ours:?}, zlib-rs {theirs:?} ({total} bytes)");
        best_ours = best_ours.min(ours);
        best_theirs = best_theirs.min(theirs);
    }
    println!(
        "best: ours {best_ours:?}, zlib-rs {best_theirs:?}, ratio {:.3}",
        best_ours.as_secs_f64() / best_theirs.as_secs_f64()
    );
}
