//! Process set-up: the open-file limit, since every socket is a file descriptor.

/// Raises the soft limit on open files to the hard limit, as the Go runtime does for its
/// programs: a soft limit of 1024 (a common default) would otherwise cap an instance near a
/// thousand connections however much the hard limit allows. Returns (before, after) when the
/// limit was raised, `None` when it already was at the hard limit or cannot be read.
// getrlimit/setrlimit have no wrapper in std, tokio or socket2.
#[allow(unsafe_code)]
pub fn raise_open_file_limit() -> Option<(libc::rlim_t, libc::rlim_t)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max {
            return None;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        (libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0).then_some((before, limit.rlim_cur))
    }
}
