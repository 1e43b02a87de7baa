//! A private ClickHouse server (Debian's `clickhouse-server`, 18.16 on
//! Debian 12) on loopback, for the ClickHouse output's tests: its own
//! config, users and data under a directory the caller owns, HTTP and
//! native ports chosen free, run without systemd
//! (`clickhouse-server --config-file=...`), killed by PID (its guard) and
//! started again on the same data. Two users: `default` without a password
//! (the schema, the test's checks) and `portcullis` with [`PASSWORD`].

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::ChildGuard;

/// The password of the `portcullis` user (quotes on purpose: it must
/// survive every hop as it is).
pub const PASSWORD: &str = "pc-s3cr'et\"pw";
pub const USER: &str = "portcullis";

/// `clickhouse-server`, if installed. Missing with CI=true is a failure
/// (the test must not skip then); otherwise the caller skips.
pub fn server_bin() -> Option<PathBuf> {
    let found = ["/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"].into_iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        assert!(
            !crate::must_not_skip(),
            "clickhouse-server missing (apt packages clickhouse-server, clickhouse-client) with CI=true"
        );
        eprintln!("skipping: no clickhouse-server (apt-get install clickhouse-server clickhouse-client)");
    }
    found
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct ClickHouse {
    bin: PathBuf,
    dir: PathBuf,
    pub http_port: u16,
    pub tcp_port: u16,
    child: Option<ChildGuard>,
}

impl ClickHouse {
    /// Writes the config under `dir` and starts the server; returns once
    /// it answers a query, with the time that took.
    pub fn start(bin: &Path, dir: &Path) -> anyhow::Result<(Self, Duration)> {
        std::fs::create_dir_all(dir.join("data"))?;
        let mut ch =
            Self { bin: bin.to_owned(), dir: dir.to_owned(), http_port: free_port()?, tcp_port: free_port()?, child: None };
        ch.write_config()?;
        let took = ch.run()?;
        Ok((ch, took))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let d = self.dir.display();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog><size>10M</size><count>1</count></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/data/tmp/</tmp_path>
  <user_files_path>{d}/data/user_files/</user_files_path>
  <format_schema_path>{d}/data/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>104857600</mark_cache_size>
  <uncompressed_cache_size>104857600</uncompressed_cache_size>
  <mlock_executable>false</mlock_executable>
</yandex>
"#,
            http = self.http_port,
            tcp = self.tcp_port
        );
        let password = PASSWORD.replace('&', "&amp;").replace('<', "&lt;");
        let users = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <quotas><default></default></quotas>
  <users>
    <default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>
    <{USER}><password>{password}</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></{USER}>
  </users>
</yandex>
"#
        );
        std::fs::write(self.dir.join("config.xml"), config)?;
        std::fs::write(self.dir.join("users.xml"), users)?;
        Ok(())
    }

    /// Starts the server and waits until it answers.
    fn run(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut c = Command::new(&self.bin);
        c.arg(format!("--config-file={}", self.dir.join("config.xml").display()))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.join("stdout"))?)
            .stderr(std::fs::File::create(self.dir.join("stderr"))?);
        // SIGKILL at once when dropped: a test ends it as a crash would.
        let mut child = ChildGuard::spawn(c).context("starting clickhouse-server")?.with_grace(Duration::ZERO);
        loop {
            if let Some(st) = child.try_wait()? {
                let err = std::fs::read_to_string(self.dir.join("server.err.log")).unwrap_or_default();
                bail!("clickhouse-server exited ({st}): {err}");
            }
            if self.query("SELECT 1").is_ok_and(|s| s.trim() == "1") {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("clickhouse-server did not answer within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(started.elapsed())
    }

    /// SIGKILL (a crash), and waits until the port refuses.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop();
        }
    }

    /// Starts again on the same data and ports.
    pub fn restart(&mut self) -> anyhow::Result<Duration> {
        self.kill();
        self.run()
    }

    /// Runs a statement as `default` over HTTP; the answer, or the error.
    pub fn query(&self, sql: &str) -> anyhow::Result<String> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--data-binary", "@-", "-w", "\n%{http_code}"])
            .arg(format!("{}/", self.url()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().expect("stdin").write_all(sql.as_bytes())?;
                c.wait_with_output()
            })?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        if !out.status.success() || code != "200" {
            bail!("{sql}: HTTP {code}: {body}{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(body.to_owned())
    }

    /// A number the statement returns.
    pub fn number(&self, sql: &str) -> u64 {
        let a = self.query(sql).unwrap_or_else(|e| panic!("{e}"));
        a.trim().parse().unwrap_or_else(|_| panic!("{sql}: not a number: {a:?}"))
    }

    /// Runs a file of statements with `clickhouse-client --multiquery`
    /// (the documented way to load deploy/clickhouse/*.sql), with extra
    /// client flags.
    pub fn client_file(&self, file: &Path, flags: &[&str]) -> anyhow::Result<()> {
        let out = Command::new("clickhouse-client")
            .args(["--host", "127.0.0.1", "--port", &self.tcp_port.to_string(), "--multiquery"])
            .args(flags)
            .stdin(std::fs::File::open(file).with_context(|| file.display().to_string())?)
            .output()
            .context("running clickhouse-client")?;
        if !out.status.success() {
            bail!("clickhouse-client < {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The command line of `clickhouse-client` for this server.
    pub fn client_command(&self) -> String {
        format!("clickhouse-client --host 127.0.0.1 --port {}", self.tcp_port)
    }
}
