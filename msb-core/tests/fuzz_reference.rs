//! Hostile input: image reference parsing, as a bounded, deterministic fuzz
//! loop (the style of `msb-core/src/agent/tests.rs`).
//!
//! Properties, for random strings, grammar-built references and mutations of
//! both:
//! - parsing never panics;
//! - an accepted reference round-trips: its `Display` form and its familiar
//!   form parse back to an equal reference, and `Display` is a fixed point;
//! - a rejected one is `Error::InvalidReference` naming the exact input.
//!
//! `MSB_FUZZ_ITERS` sets the iteration count (default 100 000: about a second
//! in a debug build).

use msb_core::Error;
use msb_core::image::Reference;

use test_utils::fuzz::Rng;

fn fuzz_iterations() -> usize {
    test_utils::fuzz::iterations(100_000)
}

const HEX: &[u8] = b"0123456789abcdef";

/// Characters that matter to the grammar, plus some that must never pass
/// (multi-byte, case-changing, control).
const ALPHABET: &[&str] = &[
    "a",
    "b",
    "z",
    "0",
    "9",
    "A",
    "Z",
    ".",
    "_",
    "__",
    "-",
    "--",
    ":",
    "/",
    "@",
    "[",
    "]",
    "sha256",
    "sha512",
    "localhost",
    "docker.io",
    "index.docker.io",
    "library",
    "é",
    "İ",
    "ß",
    "\u{0}",
    "\n",
    " ",
    "%",
    "\u{202e}",
    "ｆ",
    "K",
    "\u{212a}",
];

fn hex(rng: &mut Rng, n: usize) -> String {
    (0..n).map(|_| HEX[rng.below(16)] as char).collect()
}

/// 1 to `max` characters of `[a-z0-9]`.
fn alnum_lower(rng: &mut Rng, max: usize) -> String {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let n = 1 + rng.below(max);
    (0..n).map(|_| A[rng.below(A.len())] as char).collect()
}

/// A reference built from the grammar (almost always valid).
fn grammatical(rng: &mut Rng) -> String {
    let mut s = String::new();
    match rng.below(6) {
        0 => {}
        1 => s.push_str("localhost/"),
        2 => s.push_str(&format!("localhost:{}/", rng.below(65536))),
        3 => s.push_str(&format!(
            "{}.{}/",
            alnum_lower(rng, 8),
            rng.pick(&["io", "com", "Example", "x-y"])
        )),
        4 => s.push_str(&format!("[{}::{}]:5000/", hex(rng, 4), hex(rng, 1))),
        _ => s.push_str(&format!("127.0.0.1:{}/", rng.below(65536))),
    }
    let components = 1 + rng.below(4);
    for i in 0..components {
        if i > 0 {
            s.push('/');
        }
        s.push_str(&alnum_lower(rng, 6));
        if rng.below(3) == 0 {
            s.push_str(rng.pick(&[".", "_", "__", "-", "---"]));
            s.push_str(&alnum_lower(rng, 4));
        }
    }
    if rng.below(2) == 0 {
        s.push(':');
        s.push_str(rng.pick(&["latest", "v1.2", "3.20", "_x", "A-b.c"]));
        if rng.below(8) == 0 {
            s.push_str(&"t".repeat(rng.below(140)));
        }
    }
    if rng.below(3) == 0 {
        match rng.below(2) {
            0 => s.push_str(&format!("@sha256:{}", hex(rng, 64))),
            _ => s.push_str(&format!("@sha512:{}", hex(rng, 128))),
        }
    }
    if rng.below(20) == 0 {
        // Long names, around the 255-character limit.
        let extra = 200 + rng.below(100);
        s.insert_str(
            s.find(['/', ':', '@']).unwrap_or(s.len()),
            &"a".repeat(extra),
        );
    }
    s
}

fn noise(rng: &mut Rng) -> String {
    (0..rng.below(12)).map(|_| rng.pick(ALPHABET)).collect()
}

fn mutate(rng: &mut Rng, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    for _ in 0..=rng.below(3) {
        match rng.below(5) {
            0 if !chars.is_empty() => {
                let at = rng.below(chars.len());
                chars.remove(at);
            }
            1 => {
                let at = rng.below(chars.len() + 1);
                let piece: Vec<char> = rng.pick(ALPHABET).chars().collect();
                chars.splice(at..at, piece);
            }
            2 if !chars.is_empty() => {
                let at = rng.below(chars.len());
                chars[at] = rng.pick(ALPHABET).chars().next().unwrap_or('x');
            }
            3 => chars.truncate(rng.below(chars.len() + 1)),
            _ if !chars.is_empty() => {
                let at = rng.below(chars.len());
                chars[at] = chars[at].to_ascii_uppercase();
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// Checks one input; returns whether it was accepted.
fn check(input: &str) -> bool {
    match input.parse::<Reference>() {
        Ok(r) => {
            let shown = r.to_string();
            let again: Reference = shown
                .parse()
                .unwrap_or_else(|e| panic!("{input:?} -> {shown:?} does not re-parse: {e}"));
            assert_eq!(again, r, "{input:?} -> {shown:?}");
            assert_eq!(again.to_string(), shown, "{input:?}");
            let familiar = r.familiar();
            let from_familiar: Reference = familiar
                .parse()
                .unwrap_or_else(|e| panic!("{input:?} -> familiar {familiar:?}: {e}"));
            assert_eq!(from_familiar, r, "{input:?} -> familiar {familiar:?}");
            assert!(r.tag().is_some() || r.digest().is_some(), "{input:?}");
            // Re-targeting at a random registry never panics.
            let _ = r.with_registry("mirror.example:5000");
            let _ = r.with_registry("bad registry");
            true
        }
        Err(Error::InvalidReference { reference, .. }) => {
            assert_eq!(reference, input, "the error names the input");
            false
        }
        Err(e) => panic!("{input:?}: not an InvalidReference error: {e:?}"),
    }
}

#[test]
fn fuzz_reference_never_panics_and_round_trips() {
    let iters = fuzz_iterations();
    let mut rng = Rng::new(0x0123_4567_89ab_cdef);
    let mut accepted = 0usize;
    let mut rejected = 0usize;
    for i in 0..iters {
        let input = match i % 4 {
            0 => noise(&mut rng),
            1 => grammatical(&mut rng),
            _ => {
                let base = grammatical(&mut rng);
                mutate(&mut rng, &base)
            }
        };
        if check(&input) {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    // Both sides of the grammar must be exercised.
    assert!(
        iters < 1000 || (accepted > iters / 10 && rejected > iters / 10),
        "accepted {accepted}, rejected {rejected} of {iters}"
    );
}

/// Specific malformed references, each a typed error.
#[test]
fn malformed_references_are_typed_errors() {
    let long = format!("{}/x", "a".repeat(300));
    let cases = [
        "",
        ":",
        "@",
        "/",
        "//",
        "a//b",
        "a/",
        "/a",
        "a:",
        "a@",
        "a@sha256:",
        "a@sha256:zz",
        "a@md5:00",
        "a:tag@",
        "[::1/a",
        "[]:5000/a",
        "host:port/a",
        "localhost:/a",
        "Upper",
        "a/B",
        "é",
        "a\u{0}b",
        "a b",
        "-a",
        "a-",
        "a..b",
        "a___b",
        long.as_str(),
        "localhost:5000/a:\u{212a}",
    ];
    for case in cases {
        assert!(!check(case), "{case:?} should be rejected");
    }
    let hex64 = "f".repeat(64);
    assert!(!check(&hex64));
}
