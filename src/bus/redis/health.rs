//! Why Redis is not usable right now, per connection, for `/readyz` and the logs: the last
//! failure of each connection that has not recovered since.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::link::LinkError;

#[derive(Default)]
pub struct Health {
    problems: Mutex<BTreeMap<String, String>>,
    /// Some problem is recorded: `recovered` (called after every batch) takes no lock otherwise.
    any: AtomicBool,
}

impl Health {
    pub fn failed(&self, source: &str, error: &LinkError) {
        let why = match error {
            LinkError::Unreachable(m) => format!("unreachable: {m}"),
            LinkError::Untrusted(m) => format!("certificate not trusted: {m}"),
            LinkError::Refused(m) => format!("refused: {m}"),
        };
        self.lock().insert(source.to_owned(), why);
        self.any.store(true, Ordering::Release);
    }

    pub fn recovered(&self, source: &str) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut problems = self.lock();
        problems.remove(source);
        self.any.store(!problems.is_empty(), Ordering::Release);
    }

    /// The problems still standing, one line each (`source: why`).
    pub fn problems(&self) -> Vec<String> {
        self.lock().iter().map(|(source, why)| format!("{source}: {why}")).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.problems.lock().unwrap_or_else(|p| p.into_inner())
    }
}
