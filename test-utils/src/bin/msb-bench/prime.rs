//! Giving every cold contender memory the guest has touched recently.
//!
//! On the VMs these benchmarks run on, the hypervisor backs guest memory
//! lazily and takes back what the guest frees (free page reporting keeps
//! only about 1 GiB of freed memory unreported). A page the guest touches
//! for the first time since then costs ~10 µs instead of ~1 µs: measured
//! with `mmap(MAP_POPULATE)` in 64 MiB steps, 0.9-1.0 µs per page within
//! memory freed moments ago and 9.5-11 µs past it.
//!
//! A pull writes ~210 MB of page cache and heap for the Debian image,
//! whoever does it, so the tax is the same number of pages for every
//! contender: ~0.4 s each. Without priming, whoever runs once the warm pool
//! is used up pays it (the bench keeps every tree until the end, so that is
//! everyone from the third round on), and the ratio measures the
//! hypervisor instead of the tools: 0.24-0.27× in one session's runs, with
//! ours cold at 200-210 ms for the first two rounds and 420-560 ms after.
//!
//! So before each cold contender the bench touches a few times the image's
//! size of fresh heap and frees it, untimed: that memory is then in the
//! guest's free lists, backed, and the next allocations take it. The cost
//! per page of each priming is kept and printed, so a run shows what state
//! the machine was in. `--no-prime` measures without.

use std::time::{Duration, Instant};

/// Primes memory before cold runs, and remembers what it cost.
#[derive(Debug)]
pub(crate) struct Primer {
    /// Bytes touched per priming; 0 when disabled.
    bytes: usize,
    /// Time per 4 KiB page of each priming so far.
    per_page: Vec<Duration>,
}

impl Primer {
    /// A primer touching `bytes` each time, or none if `enabled` is false.
    pub(crate) fn new(bytes: u64, enabled: bool) -> Self {
        let bytes = if enabled {
            usize::try_from(bytes).unwrap_or(usize::MAX)
        } else {
            0
        };
        Self {
            bytes,
            per_page: Vec::new(),
        }
    }

    /// Touches every page of a fresh `bytes`-long heap allocation, then
    /// frees it (glibc maps allocations this large on their own and unmaps
    /// them on free, so the pages go straight back to the kernel), and
    /// resets this process's peak RSS, which a child's `ru_maxrss` starts
    /// from.
    pub(crate) fn prime(&mut self) -> crate::Result<()> {
        if self.bytes == 0 {
            return Ok(());
        }
        let started = Instant::now();
        // Not zeros: a zeroed allocation would be mapped without touching.
        let memory = vec![0x5au8; self.bytes];
        std::hint::black_box(&memory);
        drop(memory);
        let pages = (self.bytes / 4096).max(1) as u32;
        self.per_page.push(started.elapsed() / pages);
        crate::reset_peak_rss()
    }

    /// One line for the report: how much was primed and what it cost.
    pub(crate) fn report(&self) -> String {
        if self.bytes == 0 {
            return "memory  not primed (--no-prime): a cold run may meet memory the \
                    hypervisor backs on first touch (~10x the cost per page here)"
                .to_string();
        }
        let mut costs = self.per_page.clone();
        costs.sort();
        let (min, max) = (costs.first(), costs.last());
        let median = costs.get(costs.len() / 2);
        let us = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e6);
        format!(
            "memory  {:.0} MiB of heap touched and freed before each cold run, untimed: \
             {:.1} / {:.1} / {:.1} µs per page (min/median/max); ~1 µs is memory the guest \
             touched recently, ~10 µs memory the hypervisor backs on first touch",
            self.bytes as f64 / 1048576.0,
            us(min),
            us(median),
            us(max),
        )
    }
}
