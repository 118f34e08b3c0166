//! Keeping the applier off the front decoder's CPU while a back thread
//! decodes.
//!
//! While a large layer's back thread runs (see `halves`), three threads
//! want the two CPUs of a small machine: the front decoder, the pull's
//! critical path; the back thread, at idle priority; and the applier, which
//! wakes for each chunk the front sends it. The scheduler woke the applier
//! on its waker's CPU, the front's, every time, and never on the one the
//! idle-priority back thread had: the front gave up about a quarter of its
//! CPU to the applier while the back thread had the other one to itself (a
//! `sched_switch` trace of the Debian bench pull).
//!
//! The front therefore publishes its CPU ([`FrontCpu`]) while a back
//! thread runs, and the applier keeps itself off that CPU
//! ([`AvoidFront`]), on the back thread's, which it preempts. On the
//! Debian bench image that took 2.3 and 3.1 ms off the median cold pull
//! and 4.6 and 1.6 ms off the mean, and 1-5 ms of CPU (two runs of 40
//! paired pulls). Nothing is pinned: the applier's own set of CPUs only
//! loses the front's, and gets it back as soon as the back thread is done.

use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{CpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};
use nix::unistd::Pid;

/// No CPU to avoid.
const NONE: usize = usize::MAX;

/// The CPU the front decoder runs on, while a back thread decodes; shared
/// by a layer's decoder thread and its applier.
#[derive(Debug)]
pub(super) struct FrontCpu(AtomicUsize);

impl Default for FrontCpu {
    fn default() -> Self {
        Self(AtomicUsize::new(NONE))
    }
}

impl FrontCpu {
    /// The front, on its own thread: a back thread runs, and this is where
    /// the front is now.
    pub(super) fn here(&self) {
        if let Ok(cpu) = sched_getcpu() {
            self.0.store(cpu, Ordering::Relaxed);
        }
    }

    /// No back thread runs (any more).
    pub(super) fn clear(&self) {
        self.0.store(NONE, Ordering::Relaxed);
    }

    fn get(&self) -> Option<usize> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&cpu| cpu != NONE)
    }
}

/// The applier's side: keeps the calling thread off the CPU its layer's
/// [`FrontCpu`] names, and gives the thread its own CPUs back once it names
/// none, or when dropped (the applier runs on a pooled thread).
#[derive(Debug, Default)]
pub(super) struct AvoidFront {
    /// The CPU [`FrontCpu`] named when last followed.
    followed: Option<usize>,
    /// The thread's CPUs, while it keeps off one of them.
    own: Option<CpuSet>,
}

impl AvoidFront {
    /// Follows `front`: one atomic load unless what it names changed, so a
    /// CPU that cannot be avoided (the thread's only one) is tried once.
    pub(super) fn follow(&mut self, front: &FrontCpu) {
        let wanted = front.get();
        if wanted == self.followed {
            return;
        }
        self.followed = wanted;
        let own = match self.own.take() {
            Some(own) => own,
            None if wanted.is_some() => match sched_getaffinity(Pid::from_raw(0)) {
                Ok(own) => own,
                Err(_) => return,
            },
            None => return,
        };
        let Some(cpu) = wanted else {
            restore(&own);
            return;
        };
        let mut others = own;
        if others.unset(cpu).is_err() || !any_set(&others) {
            // Out of range, or the only CPU the thread may use.
            restore(&own);
            return;
        }
        // A cpuset may have changed under us: then this thread keeps the CPUs
        // it had, which is only slower.
        if sched_setaffinity(Pid::from_raw(0), &others).is_ok() {
            self.own = Some(own);
        }
    }
}

impl Drop for AvoidFront {
    fn drop(&mut self) {
        if let Some(own) = self.own.take() {
            restore(&own);
        }
    }
}

fn restore(own: &CpuSet) {
    if let Err(e) = sched_setaffinity(Pid::from_raw(0), own) {
        tracing::debug!(error = %e, "could not give the applier its CPUs back");
    }
}

fn any_set(set: &CpuSet) -> bool {
    (0..CpuSet::count()).any(|cpu| set.is_set(cpu).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> CpuSet {
        sched_getaffinity(Pid::from_raw(0)).unwrap()
    }

    fn cpus(set: &CpuSet) -> Vec<usize> {
        (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap())
            .collect()
    }

    #[test]
    fn the_applier_leaves_the_fronts_cpu_and_gets_it_back() {
        std::thread::spawn(|| {
            let before = cpus(&own());
            let front = FrontCpu::default();
            let mut avoid = AvoidFront::default();
            avoid.follow(&front);
            assert_eq!(cpus(&own()), before, "nothing to avoid yet");
            front.here();
            let cpu = front.get().unwrap();
            avoid.follow(&front);
            let expected: Vec<usize> = if before.len() > 1 {
                before.iter().copied().filter(|&c| c != cpu).collect()
            } else {
                before.clone()
            };
            assert_eq!(cpus(&own()), expected);
            front.clear();
            avoid.follow(&front);
            assert_eq!(cpus(&own()), before);
            // Dropped while avoiding: the thread's CPUs come back too.
            front.here();
            avoid.follow(&front);
            drop(avoid);
            assert_eq!(cpus(&own()), before);
        })
        .join()
        .unwrap();
    }
}
