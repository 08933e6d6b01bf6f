//! Hosts of their own on one machine: Linux network namespaces made by the test, each with one
//! interface on a shared bridge and its own address, so the farm's parts talk over links that
//! can be cut (`ip link set down`, blackhole routes), as links between machines fail, instead
//! of over loopback, which never does. Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and
//! iproute2's `ip`; without them [`Network::new`] fails saying so.
//!
//! The bridge lives in a namespace of its own too, so nothing is added to the machine's own
//! network and tests running side by side each have their own, on the same addresses. Every
//! namespace (and with it every interface and qdisc) is deleted on drop.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The subnet every test network uses (each in its own namespaces, so they never meet).
const SUBNET: [u8; 3] = [10, 77, 0];
/// Networks made by this process so far, naming the next one.
static NETWORKS: AtomicUsize = AtomicUsize::new(0);

/// The bridge between the hosts, and the hosts.
pub struct Network {
    prefix: String,
    switch: String,
    hosts: Vec<String>,
}

/// One host: a namespace with an interface `eth0` on the bridge.
#[derive(Clone, Debug)]
pub struct Host {
    /// Its name in the test (`redis-1`, `worker-3`, ...).
    pub name: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    ns: String,
    /// The bridge's end of its link, in the switch namespace.
    port: String,
    switch: String,
}

/// Runs a command to its end and fails with its standard error unless it succeeds.
pub fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

impl Network {
    /// Makes the bridge. Fails, saying what the harness needs, where namespaces cannot be made.
    pub fn new() -> anyhow::Result<Network> {
        remove_orphans();
        let n = NETWORKS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("tsr{}-{n}", std::process::id());
        let switch = format!("{prefix}-sw");
        ip(&["netns", "add", &switch]).context(
            "these tests run the farm on hosts of their own (Linux network namespaces): they \
             need root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2's `ip`",
        )?;
        let network = Network {
            prefix,
            switch,
            hosts: Vec::new(),
        };
        ip(&[
            "-n",
            &network.switch,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
        ])?;
        ip(&["-n", &network.switch, "link", "set", "br0", "up"])?;
        Ok(network)
    }

    /// Adds a host named `name` (short: it names the bridge's port) with the next address.
    pub fn host(&mut self, name: &str) -> anyhow::Result<Host> {
        let index = self.hosts.len() + 2;
        let ns = format!("{}-{name}", self.prefix);
        let port = format!("p{index}");
        ip(&["netns", "add", &ns])?;
        self.hosts.push(ns.clone());
        let sw = self.switch.as_str();
        ip(&[
            "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["-n", sw, "link", "set", &port, "master", "br0", "up"])?;
        let ip_addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], index as u8);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip_addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(Host {
            name: name.to_string(),
            ip: ip_addr,
            ns,
            port,
            switch: self.switch.clone(),
        })
    }
}

/// Deletes the namespaces of test processes that died without cleaning up (killed by a
/// timeout, say), which are named after their pid.
fn remove_orphans() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let pid = name
            .strip_prefix("tsr")
            .and_then(|rest| rest.split('-').next());
        let dead = pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if dead {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.switch]) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

impl Host {
    /// `program` to be run on this host (`ip netns exec`, which becomes the program, so its
    /// pid is the program's for signals).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns]).arg(program);
        command
    }

    /// `ADDR:port` on this host.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    /// Cuts its link (`ip link set down` at both ends, as an unplugged cable): it sees
    /// nobody and nobody sees it, while its processes run on.
    pub fn cut(&self) -> anyhow::Result<()> {
        self.set_link("down")
    }

    /// Joins its link again after [`Host::cut`].
    pub fn heal(&self) -> anyhow::Result<()> {
        self.set_link("up")
    }

    fn set_link(&self, state: &str) -> anyhow::Result<()> {
        ip(&["-n", &self.ns, "link", "set", "eth0", state])?;
        ip(&["-n", &self.switch, "link", "set", &self.port, state]).map(drop)
    }

    /// Drops everything between this host and `other`, in both directions (blackhole routes),
    /// leaving both reachable by everyone else; `false` joins them again.
    pub fn partition_from(&self, other: &Host, cut: bool) -> anyhow::Result<()> {
        let verb = if cut { "add" } else { "del" };
        for (host, peer) in [(self, other), (other, self)] {
            let peer = format!("{}/32", peer.ip);
            ip(&["-n", &host.ns, "route", verb, "blackhole", &peer])?;
        }
        Ok(())
    }

    /// Runs `work` on a thread inside this host's network: every socket it opens is this
    /// host's (a test's own gRPC clients, playing a client machine).
    pub fn within<T: Send>(&self, work: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let netns = std::fs::File::open(format!("/run/netns/{}", self.ns))
            .with_context(|| format!("opening the namespace of {}", self.name))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns only switches this thread's network namespace to the
                    // one the open file names; it touches no memory of ours.
                    let entered = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                    if entered != 0 {
                        bail!("setns: {}", std::io::Error::last_os_error());
                    }
                    Ok(work())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `future` to its end on a runtime inside this host's network (see [`Host::within`]).
    pub fn block_on<F: std::future::Future + Send>(&self, future: F) -> anyhow::Result<F::Output>
    where
        F::Output: Send,
    {
        self.within(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime starts")
                .block_on(future)
        })
    }

    /// Waits until something on this host accepts TCP connections at `addr`.
    pub fn wait_listening(&self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
        self.within(|| {
            let deadline = Instant::now() + timeout;
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if Instant::now() > deadline {
                    bail!("nothing listens on {addr} after {timeout:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })?
    }
}
