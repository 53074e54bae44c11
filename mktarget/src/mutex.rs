//! Locking a mutex whose holder panicked: the tools keep going (to end
//! children, remove secrets, print what they know), so every mutex of the
//! workspace is locked through [`lock`] and a panic elsewhere is reported
//! by that thread, not turned into a second one here.

use std::sync::{Mutex, MutexGuard};

/// `mutex`'s guard, also when a thread panicked while holding it: what it
/// guards is plain data (lists, counters, handles) that stays usable.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What `mutex` held, also when a thread panicked while holding it.
pub fn into_inner<T>(mutex: Mutex<T>) -> T {
    mutex
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_still_locks() {
        let mutex = Mutex::new(1);
        std::thread::scope(|scope| {
            let _ = scope
                .spawn(|| {
                    let _guard = mutex.lock().unwrap();
                    panic!("poison it");
                })
                .join();
        });
        assert!(mutex.is_poisoned());
        *lock(&mutex) += 1;
        assert_eq!(into_inner(mutex), 2);
    }
}
