//! TLS for the Redis tests: a certificate authority made by the test (the `openssl` CLI),
//! certificates it signs, and `redis-server` listening with TLS only (`--port 0 --tls-port`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, free_port, redis_server};

/// A CA and the files it signed, in a directory of their own.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub name: String,
}

impl TestCa {
    /// A new CA named `name`; its certificate is `<name>-ca.pem`.
    pub fn new(name: &str) -> Self {
        let ca = TestCa { dir: tempfile::tempdir().unwrap(), name: name.to_owned() };
        openssl(
            ca.dir.path(),
            &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"],
            &["-keyout", &ca.file("ca.key"), "-out", &ca.file("ca.pem"), "-subj", &format!("/CN={name} test CA")],
        );
        ca
    }

    /// The path of one of its files: `ca.pem`, or `<leaf>.pem` / `<leaf>.key` of [`Self::sign`].
    pub fn file(&self, file: &str) -> String {
        self.dir.path().join(format!("{}-{file}", self.name)).display().to_string()
    }

    pub fn ca(&self) -> String {
        self.file("ca.pem")
    }

    /// A certificate for `localhost` and 127.0.0.1 (server and client use), `<leaf>.pem` and
    /// `<leaf>.key`.
    pub fn sign(&self, leaf: &str) -> (String, String) {
        let (pem, key, csr) = (self.file(&format!("{leaf}.pem")), self.file(&format!("{leaf}.key")), self.file(&format!("{leaf}.csr")));
        let ext = self.file(&format!("{leaf}.ext"));
        std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        openssl(
            self.dir.path(),
            &["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"],
            &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={leaf}")],
        );
        openssl(
            self.dir.path(),
            &["x509", "-req", "-days", "2", "-CAcreateserial"],
            &["-in", &csr, "-CA", &self.ca(), "-CAkey", &self.file("ca.key"), "-out", &pem, "-extfile", &ext],
        );
        (pem, key)
    }
}

impl TestCa {
    /// Like [`Self::sign`], but valid only for a day in 2020: expired.
    pub fn sign_expired(&self, leaf: &str) -> (String, String) {
        let dir = self.dir.path();
        let (pem, key, csr) = (self.file(&format!("{leaf}.pem")), self.file(&format!("{leaf}.key")), self.file(&format!("{leaf}.csr")));
        let conf = self.file("ca.cnf");
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("serial"), "1000\n").unwrap();
        std::fs::write(
            &conf,
            format!(
                "[ca]\ndefault_ca = test\n[test]\ndatabase = {d}/index.txt\nnew_certs_dir = {d}\nserial = {d}/serial\n\
                 default_md = sha256\npolicy = any\ncopy_extensions = copy\n[any]\ncommonName = supplied\n",
                d = dir.display()
            ),
        )
        .unwrap();
        openssl(
            dir,
            &["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"],
            &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={leaf}"), "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        );
        openssl(
            dir,
            &["ca", "-batch", "-notext", "-startdate", "20200101000000Z", "-enddate", "20200102000000Z"],
            &["-config", &conf, "-cert", &self.ca(), "-keyfile", &self.file("ca.key"), "-in", &csr, "-out", &pem],
        );
        (pem, key)
    }
}

fn openssl(dir: &Path, args: &[&str], more: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).args(more).output().expect("the openssl CLI must be installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The `--tls-*` arguments of a server whose certificate `ca` signed as `leaf`.
pub fn tls_args(ca: &TestCa, leaf: &str, auth_clients: bool) -> Vec<String> {
    let (pem, key) = (ca.file(&format!("{leaf}.pem")), ca.file(&format!("{leaf}.key")));
    if !Path::new(&pem).exists() {
        ca.sign(leaf);
    }
    let auth = if auth_clients { "yes" } else { "no" };
    ["--tls-cert-file", &pem, "--tls-key-file", &key, "--tls-ca-cert-file", &ca.ca(), "--tls-auth-clients", auth]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `redis-server` with TLS only, on a free port, with the extra arguments given (an ACL user,
/// a password); restartable with another certificate.
pub struct TlsRedis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl TlsRedis {
    pub async fn start(ca: &TestCa, auth_clients: bool, extra: &[&str]) -> Self {
        let mut r = TlsRedis {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn(ca, auth_clients).await;
        r
    }

    async fn spawn(&mut self, ca: &TestCa, auth_clients: bool) {
        let child = Command::new(redis_server())
            .args(["--port", "0", "--tls-port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(tls_args(ca, "redis", auth_clients))
            .args(&self.extra)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the README's test command installs it)");
        self.child = Some(child);
        let port = self.port;
        eventually(Duration::from_secs(10), "redis-server (TLS) to accept connections", async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
    }

    /// The server again on the same port, now with a certificate `ca` signed: its data is gone.
    pub async fn restart_with(&mut self, ca: &TestCa) {
        self.stop();
        self.spawn(ca, false).await;
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `redis-cli` over TLS with `ca`'s client certificate: its output.
    pub fn cli(&self, ca: &TestCa, args: &[&str]) -> String {
        let out = cli(self.port, ca, args);
        String::from_utf8(out).unwrap().trim().to_owned()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `redis-cli --tls` against `port`, trusting `ca`, with its `client` certificate.
pub fn cli(port: u16, ca: &TestCa, args: &[&str]) -> Vec<u8> {
    let (pem, key) = (ca.file("client.pem"), ca.file("client.key"));
    if !Path::new(&pem).exists() {
        ca.sign("client");
    }
    Command::new("redis-cli")
        .args(["--tls", "--cacert", &ca.ca(), "--cert", &pem, "--key", &key, "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli comes with redis-server")
        .stdout
}
