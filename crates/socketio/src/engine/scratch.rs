//! The read buffer of each runtime thread, shared by every connection on it.

thread_local! {
    /// The buffer every connection on this thread reads into: a connection keeps only what is
    /// left of an unfinished frame or request.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0; 64 * 1024].into_boxed_slice());
}

/// Runs `f` with the thread's read buffer. `f` must not await (it cannot) nor call back here.
pub(super) fn with_scratch<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    SCRATCH.with_borrow_mut(|s| f(s))
}
