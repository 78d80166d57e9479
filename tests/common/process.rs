//! The one way tests start the built `herald` binary: [`herald`] for a one-shot subcommand,
//! [`HeraldProcess`] for a running instance (signals, logs, memory, exit status).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use super::{SECRET, eventually, free_port, scrape, wait_ready};

pub const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// The binary with `args`, as a user runs it: herald's own log level (no `RUST_LOG` from the
/// test's environment), `TEST_SECRET` set for configs that read `${TEST_SECRET}`, killed if the
/// test drops it.
pub fn herald(args: &[&str]) -> Command {
    let mut command = Command::new(HERALD);
    command.args(args).env_remove("RUST_LOG").env("TEST_SECRET", SECRET).kill_on_drop(true);
    command
}

/// How a [`HeraldProcess`] is started, beyond its config.
#[derive(Default)]
pub struct Launch {
    /// Where the config file is written (scripts it names resolve from there); a fresh
    /// temporary directory by default.
    pub dir: Option<PathBuf>,
    /// Keep stdout (the start-up banner) and stderr (the logs) for the test to read.
    pub stdout: bool,
    pub stderr: bool,
    /// Start under this soft limit on open files, as many systems set by default.
    pub open_files: Option<u32>,
    /// Environment variables set for it (`OTEL_*`, say).
    pub env: Vec<(&'static str, String)>,
}

/// The built `herald` binary running a config, for what only a real process shows (signals,
/// logs, exit status, memory). It listens on a free loopback port (`HERALD_LISTEN`).
pub struct HeraldProcess {
    pub child: Child,
    pub url: String,
    config: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl HeraldProcess {
    pub async fn start(yaml: &str) -> Self {
        Self::launch(yaml, Launch::default()).await
    }

    /// [`Self::start`], with its stderr collected: the task ends with all of it once the
    /// process exits.
    pub async fn start_capturing_logs(yaml: &str) -> (Self, tokio::task::JoinHandle<String>) {
        let mut process = Self::launch(yaml, Launch { stderr: true, ..Launch::default() }).await;
        let mut stderr = process.child.stderr.take().unwrap();
        let logs = tokio::spawn(async move {
            let mut text = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await.unwrap();
            text
        });
        (process, logs)
    }

    /// Starts herald on `yaml` and waits until it is ready.
    pub async fn launch(yaml: &str, with: Launch) -> Self {
        let temp = with.dir.is_none().then(|| tempfile::tempdir().unwrap());
        let dir = with.dir.clone().unwrap_or_else(|| temp.as_ref().unwrap().path().to_path_buf());
        let config = dir.join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        let config_arg = config.to_str().unwrap();
        let mut command = match with.open_files {
            None => herald(&["--config", config_arg]),
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!(r#"ulimit -Sn {n} && exec "$0" "$@""#), HERALD, "--config", config_arg])
                    .env_remove("RUST_LOG")
                    .env("TEST_SECRET", SECRET)
                    .kill_on_drop(true);
                sh
            }
        };
        let port = free_port();
        let piped = |keep: bool| if keep { Stdio::piped() } else { Stdio::null() };
        let child = command
            .envs(with.env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(piped(with.stdout))
            .stderr(piped(with.stderr))
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&url).await;
        Self { child, url, config, _dir: temp }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("herald is running")
    }

    /// The config file it runs, for subcommands that read the same config.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// A subcommand (`produce`, `token`) run on this instance's config.
    pub async fn run(&self, args: &[&str]) -> Output {
        herald(args).arg("--config").arg(&self.config).output().await.unwrap()
    }

    /// Sends `signal` (`-TERM`, `-HUP`) by PID.
    pub fn signal(&self, signal: &str) {
        assert!(std::process::Command::new("kill").args([signal, &self.pid().to_string()]).status().unwrap().success());
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub async fn wait_assigned(&self, n: usize) {
        eventually(Duration::from_secs(20), &format!("{n} partitions assigned"), async || {
            scrape(&self.url, "herald_source_assigned_partitions").await == n as f64
        })
        .await;
    }

    /// Sends SIGTERM, as an orchestrator does, and waits for the process to exit.
    pub async fn terminate(mut self) -> ExitStatus {
        self.signal("-TERM");
        tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.expect("herald exits after SIGTERM").unwrap()
    }
}
