//! The farm spread over hosts of its own ([`crate::netns`]), as it runs across machines: a
//! Redis primary and a replica watched by three Redis Sentinels, two coordinators on that Redis
//! behind an HAProxy (L4, health-checked on each coordinator's `/healthz`, which is what a
//! Kubernetes Service with a readiness probe does), worker hosts running real `tessera-worker`
//! processes, and a client host. Faults then strike as they do between machines: links cut,
//! processes killed or frozen, Redis failing over.
//!
//! Every process is killed on drop, before the namespaces are deleted.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::netns::{run, Host, Network};

/// Redis's port on its hosts.
pub const REDIS_PORT: u16 = 6379;
/// Sentinel's port on its hosts.
pub const SENTINEL_PORT: u16 = 26379;
/// The coordinators' gRPC port, on their hosts and on the load balancer.
pub const GRPC_PORT: u16 = 7470;
/// The coordinators' metrics and `/healthz` port.
pub const METRICS_PORT: u16 = 9464;
/// The master name the Sentinels watch.
pub const MASTER: &str = "tessera";
/// How long a process may take to be ready, and a failover to happen.
const READY: Duration = Duration::from_secs(60);

/// A process on a host, logging to a file, that can be killed, frozen and started again.
pub struct Proc {
    /// Where it runs.
    pub host: Host,
    args: Vec<OsString>,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `args` (program first) on `host`, standard output and error appended to `log`.
    pub fn start(host: &Host, args: Vec<OsString>, log: PathBuf) -> anyhow::Result<Proc> {
        let child = Self::spawn(host, &args, &log)?;
        Ok(Proc {
            host: host.clone(),
            args,
            child,
            log,
        })
    }

    fn spawn(host: &Host, args: &[OsString], log: &Path) -> anyhow::Result<Child> {
        let out = File::options().create(true).append(true).open(log)?;
        host.command(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {:?} on {}", args[0], host.name))
    }

    /// Kills it at once (SIGKILL), as a crashed machine's process ends.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again with the same command line (killing it first if it still runs), as a
    /// supervisor would.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = Self::spawn(&self.host, &self.args, &self.log)?;
        Ok(())
    }

    /// Sends `signal` (SIGSTOP freezes it, SIGCONT thaws it).
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pids fit in i32");
        // SAFETY: kill(2) touches no memory; the pid is our own child, not yet reaped.
        unsafe { libc::kill(pid, signal) };
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log holds `text` `count` times, failing (with the log) if it exits
    /// first or `timeout` passes.
    pub fn wait_log(&mut self, text: &str, count: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.log().matches(text).count() < count {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before logging {text:?}:\n{}",
                    self.host.name,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not log {text:?} in {timeout:?}:\n{}",
                    self.host.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A frozen process must be thawed to die of anything but SIGKILL; SIGKILL is enough.
        self.kill();
    }
}

/// The balancer's log line for coordinator `name` going `state`.
fn balancer_line(name: &str, state: &str) -> String {
    format!("coordinators/{name} is {state}")
}

fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(items: I) -> Vec<OsString> {
    items.into_iter().map(Into::into).collect()
}

/// How the farm is built.
pub struct FarmSpec {
    /// Worker hosts.
    pub workers: usize,
    /// The coordinators' flags besides where they listen and their Redis (`--lease-ms`, the
    /// models jobs may name, ...).
    pub coordinator_flags: Vec<String>,
    /// The workers' flags besides their coordinator and name (`--models DIR`, ...).
    pub worker_flags: Vec<String>,
}

/// The farm on its hosts.
pub struct Farm {
    /// Real `tessera-worker` processes, one per worker host.
    pub workers: Vec<Proc>,
    /// The HAProxy in front of the coordinators.
    pub balancer: Proc,
    /// The coordinators, on hosts of their own.
    pub coordinators: Vec<Proc>,
    /// Sentinels on the two Redis hosts and the balancer's host.
    pub sentinels: Vec<Proc>,
    /// Redis: the first host starts as primary, the second as its replica.
    pub redis: Vec<Proc>,
    /// The host that runs the CLI and the test's own clients.
    pub client: Host,
    /// The artifact store every coordinator shares (a shared disk, as S3 would be).
    pub store: PathBuf,
    dir: TempDir,
    /// Dropped last, once every process is gone.
    pub network: Network,
}

impl Farm {
    /// Builds the network and starts everything, waiting until Sentinel watches a primary
    /// with its replica, both coordinators are ready and every worker has started.
    pub fn start(spec: &FarmSpec) -> anyhow::Result<Farm> {
        let mut network = Network::new()?;
        let dir = TempDir::new()?;
        let redis_hosts = [network.host("redis-1")?, network.host("redis-2")?];
        let coordinator_hosts = [network.host("coord-1")?, network.host("coord-2")?];
        let balancer_host = network.host("lb")?;
        let client = network.host("client")?;
        let worker_hosts: Vec<Host> = (0..spec.workers)
            .map(|i| network.host(&format!("worker-{i}")))
            .collect::<anyhow::Result<_>>()?;
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store)?;
        let mut farm = Farm {
            workers: Vec::new(),
            balancer: start_balancer(&balancer_host, &coordinator_hosts, dir.path())?,
            coordinators: Vec::new(),
            sentinels: Vec::new(),
            redis: Vec::new(),
            client,
            store,
            dir,
            network,
        };
        farm.start_redis(&redis_hosts)?;
        let sentinel_hosts = [&redis_hosts[0], &redis_hosts[1], &balancer_host];
        for host in sentinel_hosts {
            let sentinel = start_sentinel(host, &redis_hosts[0], farm.dir.path())?;
            farm.sentinels.push(sentinel);
        }
        farm.wait_sentinels_know_replica()?;
        for host in &coordinator_hosts {
            let coordinator = farm.start_coordinator(host, &spec.coordinator_flags)?;
            farm.coordinators.push(coordinator);
            farm.wait_balancer(&host.name, "UP", 1)?;
        }
        for host in &worker_hosts {
            let worker = farm.start_worker(host, &spec.worker_flags)?;
            farm.workers.push(worker);
        }
        Ok(farm)
    }

    fn start_redis(&mut self, hosts: &[Host; 2]) -> anyhow::Result<()> {
        for (i, host) in hosts.iter().enumerate() {
            let data = self.dir.path().join(&host.name);
            std::fs::create_dir_all(&data)?;
            let mut command = args(["redis-server", "--port", "6379", "--bind"]);
            command.extend(args([host.ip.to_string(), "--dir".into()]));
            command.push(data.into());
            command.extend(args(REDIS_DURABILITY.iter().copied()));
            if i > 0 {
                command.extend(args([
                    "--replicaof".to_string(),
                    hosts[0].ip.to_string(),
                    "6379".into(),
                ]));
            }
            let log = self.log_file(&host.name);
            self.redis.push(Proc::start(host, command, log)?);
            host.wait_listening(host.addr(REDIS_PORT), READY)?;
        }
        Ok(())
    }

    fn log_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The Sentinels' addresses, as `--redis-sentinel` takes them.
    pub fn sentinel_list(&self) -> String {
        let addrs: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| s.host.addr(SENTINEL_PORT).to_string())
            .collect();
        addrs.join(",")
    }

    fn start_coordinator(&self, host: &Host, flags: &[String]) -> anyhow::Result<Proc> {
        let program = crate::binary("tessera-coordinator")?;
        let mut command = vec![program.into_os_string()];
        command.extend(args([
            "--listen".to_string(),
            host.addr(GRPC_PORT).to_string(),
        ]));
        command.extend(args([
            "--metrics-listen".to_string(),
            host.addr(METRICS_PORT).to_string(),
        ]));
        command.extend(args(["--store".into(), self.store.display().to_string()]));
        command.extend(args(["--redis-sentinel".to_string(), self.sentinel_list()]));
        command.extend(args([
            "--redis-master-name",
            MASTER,
            "--redis-wait-replicas",
            "1",
        ]));
        command.extend(args(flags.iter().cloned()));
        let mut coordinator = Proc::start(host, command, self.log_file(&host.name))?;
        coordinator.wait_log("listening on", 1, READY)?;
        Ok(coordinator)
    }

    fn start_worker(&self, host: &Host, flags: &[String]) -> anyhow::Result<Proc> {
        let program = crate::binary("tessera-worker")?;
        let mut command = vec![program.into_os_string()];
        command.extend(args([
            "--coordinator".to_string(),
            self.url(),
            "--name".into(),
            host.name.clone(),
        ]));
        command.extend(args(flags.iter().cloned()));
        Proc::start(host, command, self.log_file(&host.name))
    }

    /// Waits until the balancer has said `count` times that coordinator `name` is `state`
    /// (`UP` or `DOWN`: its health check passed or failed `rise`/`fall` times running).
    pub fn wait_balancer(&mut self, name: &str, state: &str, count: usize) -> anyhow::Result<()> {
        self.balancer
            .wait_log(&balancer_line(name, state), count, READY)
    }

    /// How many times the balancer has said so far that coordinator `name` is `state`: a
    /// fault's test counts before the fault and waits for one more, since a coordinator may
    /// have been marked DOWN already while it started.
    pub fn balancer_said(&self, name: &str, state: &str) -> usize {
        let line = balancer_line(name, state);
        self.balancer.log().matches(&line).count()
    }

    /// The farm's address for workers and clients: the load balancer's.
    pub fn url(&self) -> String {
        format!("http://{}", self.balancer.host.addr(GRPC_PORT))
    }

    /// `tessera ARGS` on the client host, against the farm.
    pub fn cli(&self, cli_args: &[&str]) -> anyhow::Result<std::process::Command> {
        let mut command = self.client.command(crate::binary("tessera")?);
        command.args(["--coordinator", &self.url()]).args(cli_args);
        Ok(command)
    }

    /// Asks a Sentinel that answers which address it names as the primary.
    pub fn primary(&self) -> anyhow::Result<String> {
        let mut last = anyhow::anyhow!("no Sentinel");
        for sentinel in &self.sentinels {
            let host = &sentinel.host;
            let ask = [
                "-h",
                &host.ip.to_string(),
                "-p",
                "26379",
                "SENTINEL",
                "get-master-addr-by-name",
                MASTER,
            ];
            match run(host.command("redis-cli").args(ask)) {
                Ok(reply) => return Ok(reply.lines().next().unwrap_or_default().to_string()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `redis-cli` on Redis host `index`, against its own server.
    pub fn redis_cli(&self, index: usize, command: &[&str]) -> anyhow::Result<String> {
        let host = &self.redis[index].host;
        let target = ["-h", &host.ip.to_string(), "-p", "6379"];
        run(host.command("redis-cli").args(target).args(command))
    }

    fn wait_sentinels_know_replica(&self) -> anyhow::Result<()> {
        wait_until(READY, "the Sentinels to see the replica", || {
            self.sentinels.iter().all(|s| {
                let host = &s.host;
                let ask = [
                    "-h",
                    &host.ip.to_string(),
                    "-p",
                    "26379",
                    "SENTINEL",
                    "replicas",
                    MASTER,
                ];
                run(host.command("redis-cli").args(ask))
                    .is_ok_and(|reply| reply.contains(&self.redis[1].host.ip.to_string()))
            }) && self
                .redis_cli(1, &["INFO", "replication"])
                .is_ok_and(|info| info.contains("master_link_status:up"))
        })
    }

    /// Waits until the Sentinels name a primary other than `old` (`ip`), and returns it.
    pub fn wait_new_primary(&self, old: &str) -> anyhow::Result<String> {
        let mut primary = String::new();
        wait_until(READY, "Sentinel to promote a replica", || {
            primary = self.primary().unwrap_or_default();
            !primary.is_empty() && primary != old
        })?;
        Ok(primary)
    }
}

/// What every Redis of the farm runs with so an acknowledged write outlives its primary: each
/// write is in the append-only file before it is answered, and a primary without a replica
/// that has kept up within the last few seconds refuses writes rather than accept what a
/// failover would lose.
pub const REDIS_DURABILITY: [&str; 12] = [
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
    "--save",
    "",
    "--min-replicas-to-write",
    "1",
    "--min-replicas-max-lag",
    "5",
    "--protected-mode",
    "no",
];

/// Polls `done` until it holds, failing after `timeout` naming what was awaited.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("waited {timeout:?} for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn start_sentinel(host: &Host, primary: &Host, dir: &Path) -> anyhow::Result<Proc> {
    let config = dir.join(format!("sentinel-{}.conf", host.name));
    std::fs::write(
        &config,
        format!(
            "port {SENTINEL_PORT}\nbind {ip}\nprotected-mode no\ndir {dir}\n\
             sentinel monitor {MASTER} {primary} {REDIS_PORT} 2\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 5000\n\
             sentinel parallel-syncs {MASTER} 1\n",
            ip = host.ip,
            dir = dir.display(),
            primary = primary.ip,
        ),
    )?;
    let log = dir.join(format!("sentinel-{}.log", host.name));
    let sentinel = Proc::start(
        host,
        args([OsString::from("redis-sentinel"), config.into()]),
        log,
    )?;
    host.wait_listening(host.addr(SENTINEL_PORT), READY)?;
    Ok(sentinel)
}

/// HAProxy in TCP mode: each coordinator is checked every 250 ms on `GET /healthz` (503 while
/// its Redis does not answer), and one found down has its connections shut, so workers and
/// watches reconnect through the balancer to the other.
fn start_balancer(host: &Host, coordinators: &[Host], dir: &Path) -> anyhow::Result<Proc> {
    let servers: String = coordinators
        .iter()
        .map(|c| {
            format!(
                "  server {} {}:{GRPC_PORT} check port {METRICS_PORT}\n",
                c.name, c.ip
            )
        })
        .collect();
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 1h\n  timeout server 1h\n\
             frontend grpc\n  bind {ip}:{GRPC_PORT}\n  default_backend coordinators\n\
             backend coordinators\n  balance leastconn\n  option httpchk GET /healthz\n\
             \x20 http-check expect status 200\n\
             \x20 default-server inter 250ms fall 2 rise 2 on-marked-down shutdown-sessions\n{servers}",
            ip = host.ip,
        ),
    )?;
    let log = dir.join("haproxy.log");
    let command = args([
        OsString::from("haproxy"),
        "-db".into(),
        "-f".into(),
        config.into(),
    ]);
    let balancer = Proc::start(host, command, log)?;
    host.wait_listening(host.addr(GRPC_PORT), READY)?;
    Ok(balancer)
}
