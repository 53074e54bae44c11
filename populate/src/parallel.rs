//! Running independent jobs a few at a time: a target's sources, a fleet's
//! hosts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use mktarget::mutex::{self, lock};

/// Runs `each(i)` for `i` in `0..count`, starting them in order, at most
/// `jobs` at once; once `stop()` says so, no new one starts (the running
/// ones finish). Returns each one's result, `None` for those never started.
pub fn each<T: Send>(
    count: usize,
    jobs: usize,
    stop: impl Fn() -> bool + Sync,
    each: impl Fn(usize) -> T + Sync,
) -> Vec<Option<T>> {
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<T>>> = (0..count).map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, count.max(1)) {
            scope.spawn(|| loop {
                if stop() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= count {
                    break;
                }
                let result = each(i);
                *lock(&results[i]) = Some(result);
            });
        }
    });
    results.into_iter().map(mutex::into_inner).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn every_job_runs_once_and_results_keep_their_order() {
        let results = each(10, 3, || false, |i| i * 2);
        assert_eq!(results, (0..10).map(|i| Some(i * 2)).collect::<Vec<_>>());
    }

    #[test]
    fn a_stop_lets_no_new_job_start() {
        let stopped = AtomicBool::new(false);
        let results = each(
            5,
            1,
            || stopped.load(Ordering::SeqCst),
            |i| {
                if i == 1 {
                    stopped.store(true, Ordering::SeqCst);
                }
                i
            },
        );
        assert_eq!(results, [Some(0), Some(1), None, None, None]);
    }
}
