//! Long-lived helper threads that large puts (from memory or streamed),
//! reads and verifications share their work with.
//!
//! A thread spawned per put is often started on the CPU of the thread that
//! spawned it, where it waits for that busy thread's time slice instead of
//! running on the idle core (measured on a 2-core VM: in 5-60% of puts,
//! depending on the load), or starts late anyway, and it costs a clone and
//! a stack mapping each time. A parked thread woken through a condition
//! variable is placed by the kernel's wake-up path, which looks for an idle
//! CPU. So the helpers live for the process, asleep between jobs. Measured
//! for 16 MiB puts (`voidbox bench`'s loop): the helper starts a median
//! 0.05-0.09 ms after the offer instead of 2-3.7 ms for a spawned thread,
//! and with the second core idle a put runs at 1.0-1.1x the rate of blake3
//! on one thread instead of 0.6-0.8x.
//!
//! A condition variable's wake-up still prefers the waker's CPU when the
//! two threads share data (the scheduler's wake-affine choice), and there
//! the helper waits behind the caller it was meant to relieve. Measured on
//! a 2-core VM whose other core was idle (16 MiB puts, `bench_loop`): in
//! most puts the helper started on the caller's CPU 1.4-4.5 ms after the
//! offer, most of the put's 4-5 ms. So before waking a helper, the caller
//! keeps it off its own CPU through the helper's affinity mask (one
//! syscall, made only when the caller has moved since the last offer).
//!
//! [`with_helper`] offers a job to an idle helper while the calling thread
//! runs its own part. The job must tolerate never running: a helper may be
//! busy with another put, or not wake before the caller is done, and then
//! the offer is simply withdrawn. This module knows nothing about files or
//! hashing.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;

/// What a helper is doing.
enum State {
    /// Asleep, waiting for a job.
    Idle,
    /// A job was offered and not yet taken.
    Offered(Job),
    /// Running the job it took.
    Running,
    /// Finished the job; `Some` if it panicked. The caller that offered the
    /// job takes this and makes the helper idle again.
    Finished(Option<Box<dyn Any + Send>>),
}

/// A job with its lifetime erased; see the safety argument in
/// [`with_helper`].
struct Job(*const (dyn Fn() + Sync + 'static));

// SAFETY: the pointee is `Sync`, so calling it from another thread through
// a shared reference is allowed; the pointer itself is just an address.
unsafe impl Send for Job {}

struct Helper {
    state: Mutex<State>,
    /// Signalled when a job is offered (to the helper) and when it is
    /// finished (to the caller).
    changed: Condvar,
    /// The helper thread's id, set by the thread when it starts.
    #[cfg(target_os = "linux")]
    tid: OnceLock<rustix::thread::Pid>,
    /// The CPU the helper's affinity mask leaves out, or `usize::MAX`.
    #[cfg(target_os = "linux")]
    kept_off: AtomicUsize,
}

impl Helper {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Only this module changes the state, never while it could panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The helper thread's loop.
    fn serve(&self) {
        #[cfg(target_os = "linux")]
        let _ = self.tid.set(rustix::thread::gettid());
        loop {
            let job = {
                let mut state = self.lock();
                loop {
                    if let State::Offered(_) = *state {
                        break;
                    }
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                match std::mem::replace(&mut *state, State::Running) {
                    State::Offered(job) => job,
                    _ => unreachable!("checked above"),
                }
            };
            // SAFETY: the caller that offered the job keeps what it borrows
            // alive until it has seen `Finished` (see `with_helper`).
            let job = unsafe { &*job.0 };
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).err();
            *self.lock() = State::Finished(panicked);
            self.changed.notify_all();
        }
    }
}

/// Helpers beyond the calling thread: one less than the CPUs, at least one.
fn helpers_max() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        thread::available_parallelism()
            .map(|n| n.get().saturating_sub(1))
            .unwrap_or(1)
            .max(1)
    })
}

static HELPERS: Mutex<Vec<Arc<Helper>>> = Mutex::new(Vec::new());

#[cfg(test)]
thread_local! {
    /// Set by tests of callers to make [`with_helper`] never offer the job,
    /// as when every helper is busy.
    pub(crate) static ALONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Offers `job` to an idle helper, starting one if there are fewer than
/// [`helpers_max`]. `None` if every helper is busy or none could start.
fn offer(job: Job) -> Option<Arc<Helper>> {
    let mut helpers = HELPERS.lock().unwrap_or_else(|e| e.into_inner());
    for helper in helpers.iter() {
        let mut state = helper.lock();
        if let State::Idle = *state {
            *state = State::Offered(job);
            drop(state);
            keep_off_this_cpu(helper);
            helper.changed.notify_all();
            return Some(helper.clone());
        }
    }
    if helpers.len() >= helpers_max() {
        return None;
    }
    let helper = Arc::new(Helper {
        state: Mutex::new(State::Offered(job)),
        changed: Condvar::new(),
        #[cfg(target_os = "linux")]
        tid: OnceLock::new(),
        #[cfg(target_os = "linux")]
        kept_off: AtomicUsize::new(usize::MAX),
    });
    let serving = helper.clone();
    // Without a thread the caller works alone, so failing to start one is
    // not an error.
    thread::Builder::new()
        .name("voidbox-cas-helper".into())
        .spawn(move || serving.serve())
        .ok()?;
    helpers.push(helper.clone());
    Some(helper)
}

/// Restricts `helper` to the CPUs the process may use other than the one
/// the calling thread is on, so that waking it does not queue it behind the
/// caller (see the module docs). Best effort: with one CPU, an unknown
/// mask, or a failing call, the helper stays where the kernel puts it.
#[cfg(target_os = "linux")]
fn keep_off_this_cpu(helper: &Helper) {
    use rustix::thread::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
    /// The CPUs the process could use when the first helper was offered
    /// work: its main thread's mask (the caller's own may be narrower).
    static ALLOWED: OnceLock<Option<CpuSet>> = OnceLock::new();
    let Some(&tid) = helper.tid.get() else {
        // Not started yet: a new thread is placed on an idle CPU anyway.
        return;
    };
    let cpu = sched_getcpu();
    if helper.kept_off.load(Ordering::Relaxed) == cpu {
        return;
    }
    let Some(mut others) =
        *ALLOWED.get_or_init(|| sched_getaffinity(Some(rustix::process::getpid())).ok())
    else {
        return;
    };
    others.unset(cpu);
    if others.count() > 0 && sched_setaffinity(Some(tid), &others).is_ok() {
        helper.kept_off.store(cpu, Ordering::Relaxed);
    }
}

#[cfg(not(target_os = "linux"))]
fn keep_off_this_cpu(_helper: &Helper) {}

/// Takes back an offer: withdraws the job if no helper took it yet, else
/// waits until the helper is finished. Returns the helper's panic, if any.
fn take_back(helper: &Helper) -> Option<Box<dyn Any + Send>> {
    let mut state = helper.lock();
    loop {
        match std::mem::replace(&mut *state, State::Idle) {
            State::Offered(_) => return None,
            State::Finished(panicked) => return panicked,
            State::Running => {
                *state = State::Running;
                state = helper
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            State::Idle => unreachable!("an offered helper is idle only after take_back"),
        }
    }
}

/// Runs `main` on the calling thread while offering `help` to a helper
/// thread, and returns `main`'s result once the helper is done with `help`
/// (or never started it). `help` may thus run once or not at all. A panic
/// in `help` is re-raised here.
pub(crate) fn with_helper<R>(help: &(dyn Fn() + Sync), main: impl FnOnce() -> R) -> R {
    /// Takes the offer back even when `main` panics, so that `help`'s
    /// borrows end before this function returns or unwinds.
    struct Offer(Option<Arc<Helper>>);
    impl Drop for Offer {
        fn drop(&mut self) {
            if let Some(helper) = self.0.take() {
                if let Some(panic) = take_back(&helper) {
                    if !thread::panicking() {
                        std::panic::resume_unwind(panic);
                    }
                }
            }
        }
    }
    // SAFETY: only the lifetime is erased. The helper dereferences the
    // pointer only between taking the job (`Offered` -> `Running`) and
    // reporting `Finished`, and `Offer`, dropped before this function
    // returns or unwinds (it is a local that is never moved out or
    // forgotten), waits for `Finished` unless it withdrew the job first.
    let job = Job(unsafe {
        std::mem::transmute::<*const (dyn Fn() + Sync + '_), *const (dyn Fn() + Sync + 'static)>(
            help,
        )
    });
    #[cfg(test)]
    if ALONE.with(std::cell::Cell::get) {
        return main();
    }
    let offer = Offer(offer(job));
    let result = main();
    drop(offer);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// Other tests in this process may hold every helper for a while, so a
    /// test that needs its job run retries until a helper takes it.
    const ATTEMPTS: usize = 1000;

    /// The caller's part: waits until `count` is non-zero, for at most a
    /// moment (the job may never be taken).
    fn wait_for(count: &AtomicUsize) {
        let started = Instant::now();
        while count.load(Ordering::SeqCst) == 0 && started.elapsed() < Duration::from_millis(50) {
            thread::yield_now();
        }
    }

    #[test]
    fn the_job_runs_at_most_once_and_helpers_stay_bounded() {
        for _ in 0..100 {
            let runs = AtomicUsize::new(0);
            let out = with_helper(
                &|| {
                    runs.fetch_add(1, Ordering::SeqCst);
                },
                || 7,
            );
            assert_eq!(out, 7);
            assert!(runs.load(Ordering::SeqCst) <= 1);
        }
        assert!(HELPERS.lock().unwrap().len() <= helpers_max());
    }

    #[test]
    fn a_job_that_started_is_finished_when_with_helper_returns() {
        let finished = AtomicUsize::new(0);
        for _ in 0..ATTEMPTS {
            let started = AtomicUsize::new(0);
            with_helper(
                &|| {
                    started.store(1, Ordering::SeqCst);
                    // Still running when the caller is done waiting.
                    thread::sleep(Duration::from_millis(100));
                    finished.store(1, Ordering::SeqCst);
                },
                || wait_for(&started),
            );
            if started.load(Ordering::SeqCst) == 1 {
                assert_eq!(finished.load(Ordering::SeqCst), 1);
                return;
            }
        }
        panic!("no helper took the job in {ATTEMPTS} attempts");
    }

    #[test]
    fn a_panic_in_the_job_reaches_the_caller_and_the_helper_survives() {
        let mut panicked = false;
        for _ in 0..ATTEMPTS {
            let started = AtomicUsize::new(0);
            let caught = std::panic::catch_unwind(|| {
                with_helper(
                    &|| {
                        started.store(1, Ordering::SeqCst);
                        panic!("a bug in the job");
                    },
                    || wait_for(&started),
                )
            });
            if started.load(Ordering::SeqCst) == 1 {
                assert!(caught.is_err(), "the job's panic was lost");
                panicked = true;
                break;
            }
            assert!(caught.is_ok());
        }
        assert!(panicked, "no helper took the job in {ATTEMPTS} attempts");
        // The helpers keep serving jobs.
        for _ in 0..ATTEMPTS {
            let runs = AtomicUsize::new(0);
            with_helper(
                &|| {
                    runs.fetch_add(1, Ordering::SeqCst);
                },
                || wait_for(&runs),
            );
            if runs.load(Ordering::SeqCst) == 1 {
                return;
            }
        }
        panic!("no helper ran a job after one panicked");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_woken_helper_runs_off_the_callers_cpu() {
        use rustix::thread::{gettid, sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
        let allowed = sched_getaffinity(None).unwrap();
        let Some(cpu) = (0..CpuSet::MAX_CPU).find(|&c| allowed.is_set(c)) else {
            panic!("this thread may run on no CPU");
        };
        if allowed.count() < 2 {
            eprintln!("one CPU: a helper can only share the caller's");
            return;
        }
        // The caller stays on one CPU, so "its CPU" is one thing.
        let mut only = CpuSet::new();
        only.set(cpu);
        sched_setaffinity(None, &only).unwrap();
        // A helper's first job may start before its first offer set its
        // mask; only the later runs of a thread seen before count.
        let mut seen = Vec::new();
        let mut checked = 0;
        for _ in 0..ATTEMPTS {
            let ran_on = Mutex::new(None);
            let ran = AtomicUsize::new(0);
            with_helper(
                &|| {
                    *ran_on.lock().unwrap() = Some((gettid(), sched_getcpu()));
                    ran.store(1, Ordering::SeqCst);
                },
                || wait_for(&ran),
            );
            let Some((tid, helper_cpu)) = ran_on.into_inner().unwrap() else {
                continue;
            };
            if seen.contains(&tid) {
                assert_ne!(helper_cpu, cpu, "the helper ran on its caller's CPU");
                checked += 1;
                if checked == 20 {
                    break;
                }
            } else {
                seen.push(tid);
            }
        }
        sched_setaffinity(None, &allowed).unwrap();
        assert_eq!(
            checked, 20,
            "helpers took too few jobs in {ATTEMPTS} attempts"
        );
    }
}
