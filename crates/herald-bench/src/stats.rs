//! Measuring: clocks, this process's CPU, another process's RSS and CPU from /proc, percentiles.

// getrusage, sysconf, setrlimit and setsockopt(IP_BIND_ADDRESS_NO_PORT) have no safe wrapper in
// std, tokio or socket2.
#![allow(unsafe_code)]

/// Unix time in microseconds: herald's own clock, which every process on the machine shares.
pub fn now_us() -> u64 {
    herald::clock::unix_us().max(0) as u64
}

/// User + system CPU of this process so far, in microseconds (getrusage).
pub fn cpu_micros() -> u64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// Raises the soft open-files limit to the hard one (about 20,000 here).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: plain getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        limit.rlim_cur as u64
    }
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of `pid`, in microseconds.
pub fn proc_cpu_micros(pid: u32) -> Option<u64> {
    proc_cpu_split(pid).map(|(user, system)| user + system)
}

/// utime and stime of `pid` (in user space, in the kernel), in microseconds.
pub fn proc_cpu_split(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are 12 and 13 here (state is field 3).
    let (user, system): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((user * 1_000_000 / hz, system * 1_000_000 / hz))
}

/// p50, p90, p99 and max of `values` (sorted in place), or zeros when empty.
pub fn percentiles(values: &mut [i64]) -> [i64; 4] {
    if values.is_empty() {
        return [0; 4];
    }
    values.sort_unstable();
    let at = |q: f64| values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1];
    [at(0.50), at(0.90), at(0.99), values[values.len() - 1]]
}

/// A client socket bound to `bind` whose port the kernel picks at connect time, by the whole
/// address pair (`IP_BIND_ADDRESS_NO_PORT`): consecutive runs from one source address do not run
/// out of ports while the last run's connections linger in TIME_WAIT.
pub fn client_socket(bind: std::net::IpAddr) -> std::io::Result<tokio::net::TcpSocket> {
    use std::os::fd::AsRawFd;
    let socket = tokio::net::TcpSocket::new_v4()?;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `on` for the given length on this open socket.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket.bind(std::net::SocketAddr::new(bind, 0))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_of_a_hundred() {
        let mut v: Vec<i64> = (1..=100).rev().collect();
        assert_eq!(super::percentiles(&mut v), [50, 90, 99, 100]);
    }
}
