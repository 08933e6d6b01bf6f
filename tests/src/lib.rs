//! The test harness: real services on free loopback ports. Tests and benchmarks start a real
//! `redis-server` and real Tessera binaries through this crate instead of standing in for them,
//! and every process is killed when its handle is dropped, so a failing test leaves nothing
//! running.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;

pub mod deploy;
pub mod follow;
pub mod hosts;
pub mod jobs;
pub mod netns;
pub mod otlp;
pub mod prometheus;
pub mod protocol;
pub mod s3;
pub mod scrape;
pub mod tls;

/// How long a service may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a loopback port")
}

/// A `redis-server` of our own on a free port, with its files in a temporary directory; killed
/// on drop. Without persistence by default; [`RedisServer::start_durable`] keeps an
/// append-only file synced on every write, so a killed server comes back with every write it
/// acknowledged.
pub struct RedisServer {
    child: Child,
    port: u16,
    durable: bool,
    dir: TempDir,
}

impl RedisServer {
    /// Starts Redis and waits until it accepts connections. Fails with a hint when
    /// `redis-server` is not installed (scripts/setup.sh installs it).
    pub fn start() -> anyhow::Result<RedisServer> {
        Self::start_on(free_port())
    }

    /// Starts Redis on `port`, for a test that pointed a service at it before it existed.
    pub fn start_on(port: u16) -> anyhow::Result<RedisServer> {
        Self::launch(port, false)
    }

    /// Starts Redis with an append-only file (`appendfsync always`), for tests that restart it.
    pub fn start_durable() -> anyhow::Result<RedisServer> {
        Self::launch(free_port(), true)
    }

    fn launch(port: u16, durable: bool) -> anyhow::Result<RedisServer> {
        let dir = TempDir::new()?;
        let child = Self::spawn(port, durable, dir.path())?;
        let mut server = RedisServer {
            child,
            port,
            durable,
            dir,
        };
        server.wait_listening()?;
        Ok(server)
    }

    fn spawn(port: u16, durable: bool, dir: &Path) -> anyhow::Result<Child> {
        let persistence: &[&str] = if durable {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(persistence)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (run scripts/setup.sh, which installs it)")
    }

    /// Kills the server at once (SIGKILL), as a crashed node ends; [`RedisServer::restart`]
    /// brings it back on the same port with the same files.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again (killing it first if it still runs) on the same port and
    /// directory, and waits until it accepts connections: a durable one has replayed its
    /// append-only file by then.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = Self::spawn(self.port, self.durable, self.dir.path())?;
        self.wait_listening()
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        wait_listening(&mut self.child, self.port, "redis-server")
    }

    /// The `redis://` URL of database 0.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `child` (called `name` in errors) accepts connections on loopback `port`;
/// fails when it exits first or takes longer than a service may to start.
pub fn wait_listening(child: &mut Child, port: u16, name: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited at start: {status}");
        }
        if start.elapsed() > START_TIMEOUT {
            bail!("{name} did not listen on port {port} in time");
        }
        std::thread::yield_now();
    }
    Ok(())
}

/// A program the tests need that `scripts/setup.sh` installs under `.deps/` (e.g.
/// `venv/bin/moto_server`), or an error naming it and how to get it, so a machine without it
/// fails the test instead of skipping it.
pub fn dependency(relative: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.deps")
        .join(relative);
    if !path.is_file() {
        bail!(
            "{} is missing: run scripts/setup.sh, which installs it",
            path.display()
        );
    }
    Ok(path)
}

/// A program the tests run from the system's `PATH` (a Debian package), or an error naming it
/// and the package that has it.
pub fn system_tool(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .with_context(|| {
            format!(
                "{name} is not installed: run scripts/setup.sh, which installs Debian's {package}"
            )
        })
}

/// A Tessera binary built by the same `cargo` invocation as the running test or benchmark:
/// it sits in the target directory's profile folder, next to `deps/`.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .ancestors()
        .find(|dir| dir.join(name).is_file())
        .with_context(|| {
            format!(
                "no {name} binary next to {}: build it first (cargo test --workspace builds every binary)",
                exe.display()
            )
        })?;
    Ok(profile_dir.join(name))
}

/// A running service process whose standard error goes to a log file; killed on drop.
pub struct Service {
    child: Child,
    /// Where it listens, as it printed at start.
    pub addr: SocketAddr,
    /// Where it serves `/metrics`, when it printed a `metrics on ADDR` line before listening.
    pub metrics: Option<SocketAddr>,
    log: PathBuf,
    _dir: TempDir,
}

impl Service {
    /// Starts `command` and waits for the standard-output line that ends in
    /// `listening on ADDR`, the convention of every Tessera server (and notes a `metrics on
    /// ADDR` line before it). Unless the command sets `TESSERA_METRICS_LISTEN`, its metrics go
    /// on a free port, so services started side by side do not fight over the default one.
    pub fn start(mut command: Command) -> anyhow::Result<Service> {
        let dir = TempDir::new()?;
        if !command
            .get_envs()
            .any(|(name, _)| name == "TESSERA_METRICS_LISTEN")
        {
            command.env("TESSERA_METRICS_LISTEN", "127.0.0.1:0");
        }
        let log = dir.path().join("stderr.log");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut metrics = None;
        let addr = loop {
            let Some(line) = lines.next().transpose()? else {
                let status = child.wait()?;
                bail!(
                    "{command:?} exited ({status}) before listening:\n{}",
                    read_log(&log)
                );
            };
            if let Some((_, addr)) = line.rsplit_once("listening on ") {
                break addr.trim().parse()?;
            }
            if let Some((_, addr)) = line.rsplit_once("metrics on ") {
                metrics = Some(addr.trim().parse()?);
            }
        };
        // Keep draining standard output so the process never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Service {
            child,
            addr,
            metrics,
            log,
            _dir: dir,
        })
    }

    /// `http://ADDR`, for gRPC clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its standard error so far, for assertion messages.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Its process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it at once (SIGKILL), the way a crash or an evicted pod ends.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for it to exit by itself and returns whether it succeeded.
    pub fn wait(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.wait()?.success())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
