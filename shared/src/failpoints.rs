//! Crash points for the crash tests. With the `failpoints` feature (test
//! builds only), `FAILPOINTS=consumer::before_ack=1*return` makes the
//! process abort at that point, like `kill -9`: no destructor, no flush.
//! Without the feature, [`crash_point!`] compiles to nothing.
//!
//! Points: `consumer::before_commit`, `consumer::before_ack`,
//! `outbox::before_publish`, `outbox::before_mark_sent`.

/// Reads `FAILPOINTS` (test builds only). Call once at process start.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

/// Aborts the process here when the named failpoint fires.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        {
            if $crate::failpoints::fires($name) {
                eprintln!("failpoint {} fired: aborting", $name);
                std::process::abort();
            }
        }
    };
}

#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub fn fires(name: &str) -> bool {
    fail::eval(name, |_| ()).is_some()
}
