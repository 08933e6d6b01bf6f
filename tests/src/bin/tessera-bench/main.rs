//! `tessera-bench`: what the farm's machinery costs, measured on real processes over loopback.
//! It prints tables; it asserts nothing (speed is never a test).
//!
//! `tessera-bench coordinator` starts a coordinator (on a fresh `redis-server`, then with the
//! embedded state) and runs protocol clients that do no work: each leases a task, uploads a
//! tiny picture and completes it, as fast as it can. It reports tasks per second and the
//! latency of leasing and of finishing (upload plus completion).
//!
//!     cargo build --release -p tessera-coordinator -p tessera-tests
//!     target/release/tessera-bench coordinator --clients 1,10,100 --tasks 3000
//!
//! `tessera-bench hosts` runs the same clients against two coordinators on hosts of their own
//! (network namespaces, `tessera_tests::hosts`: Redis under Sentinel, HAProxy in front, the
//! clients on a client host), so each call crosses real links and the balancer; it needs root.
//!
//!     target/release/tessera-bench hosts --clients 1,10,100 --tasks 3000
//!
//! `tessera-bench farm` measures what the farm adds to real work: for each worker count it
//! starts a coordinator and that many real `tessera-worker` processes, submits an upscale job
//! of small pictures (four tile tasks and a stitch per picture, on the real Real-ESRGAN
//! weights), and reads each worker's `--timings` record. Per task it reports the time from the
//! lease to the start of the work (downloading inputs) and from the end of the work to the next
//! lease (upload, completion, the next lease request), as a share of the work.
//!
//!     cargo build --release -p tessera-coordinator -p tessera-worker -p tessera-tests
//!     target/release/tessera-bench farm --workers 1,2,4,8 --pictures 40

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tessera_proto::access::Access;
use tessera_proto::v1;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_tests::hosts::{Farm, FarmSpec};
use tessera_tests::protocol::ProtocolWorker;
use tessera_tests::{binary, RedisServer, Service};

mod farm;

#[derive(Parser)]
#[command(about = "Benchmarks of the farm's machinery on real processes")]
struct Cli {
    #[command(subcommand)]
    target: Target,
}

#[derive(Subcommand)]
enum Target {
    /// Lease/complete throughput and latency through the coordinator.
    Coordinator {
        /// Concurrent protocol clients per row.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 10, 100])]
        clients: Vec<usize>,
        /// Tasks per row.
        #[arg(long, default_value_t = 3000)]
        tasks: usize,
    },
    /// Lease/complete throughput and latency through two coordinators on hosts of their own.
    Hosts {
        /// Concurrent protocol clients per row.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 10, 100])]
        clients: Vec<usize>,
        /// Tasks per row.
        #[arg(long, default_value_t = 3000)]
        tasks: usize,
    },
    /// The farm's overhead around real tasks on real worker processes.
    Farm(farm::FarmBench),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().target {
        Target::Coordinator { clients, tasks } => bench_coordinator(&clients, tasks).await,
        Target::Hosts { clients, tasks } => bench_hosts(&clients, tasks),
        Target::Farm(args) => farm::run(&args).await,
    }
}

/// What one client measured.
#[derive(Default)]
struct Timings {
    lease: Vec<Duration>,
    finish: Vec<Duration>,
}

/// Prints the table's heading.
fn heading(tasks: usize) {
    println!("{tasks} tasks per row; each client leases, uploads a 16x16 PNG and completes");
    println!(
        "{:>9} {:>8} {:>10} {:>14} {:>14} {:>15} {:>15}",
        "state",
        "clients",
        "tasks/s",
        "lease p50 ms",
        "lease p99 ms",
        "finish p50 ms",
        "finish p99 ms"
    );
}

/// Prints one row of the table.
fn row(state: &str, n: usize, tasks: usize, elapsed: Duration, timings: &Timings) {
    let rate = tasks as f64 / elapsed.as_secs_f64();
    println!(
        "{state:>9} {n:>8} {rate:>10.0} {:>14.2} {:>14.2} {:>15.2} {:>15.2}",
        percentile(&timings.lease, 0.50),
        percentile(&timings.lease, 0.99),
        percentile(&timings.finish, 0.50),
        percentile(&timings.finish, 0.99),
    );
}

async fn bench_coordinator(clients: &[usize], tasks: usize) -> anyhow::Result<()> {
    let program = binary("tessera-coordinator")?;
    heading(tasks);
    for backend in ["redis", "embedded"] {
        for &n in clients {
            let store = tempfile::TempDir::new()?;
            let redis = (backend == "redis").then(RedisServer::start).transpose()?;
            let mut command = Command::new(&program);
            command
                .args(["--listen", "127.0.0.1:0", "--store"])
                .arg(store.path())
                .env("RUST_LOG", "warn");
            match &redis {
                Some(r) => command.args(["--redis", &r.url()]),
                None => command.arg("--embedded"),
            };
            let service = Service::start(command)?;
            let (elapsed, timings) = run_row(&service.url(), n, tasks)
                .await
                .with_context(|| format!("{backend} with {n} clients:\n{}", service.log()))?;
            row(backend, n, tasks, elapsed, &timings);
        }
    }
    Ok(())
}

/// The rows of `bench_coordinator` on two coordinators behind HAProxy on hosts of their own,
/// on a Redis under Sentinel: a fresh farm per row, the clients on the client host.
fn bench_hosts(clients: &[usize], tasks: usize) -> anyhow::Result<()> {
    heading(tasks);
    for &n in clients {
        let spec = FarmSpec {
            workers: 0,
            coordinator_flags: vec![],
            worker_flags: vec![],
        };
        let farm = Farm::start(&spec)?;
        let url = farm.url();
        let (elapsed, timings) = farm.client.block_on(run_row(&url, n, tasks))??;
        row("hosts", n, tasks, elapsed, &timings);
    }
    Ok(())
}

/// Submits one job of `tasks` renders and lets `n` clients work it off; returns the wall time
/// from the first lease to the last completion and every client's timings.
async fn run_row(url: &str, n: usize, tasks: usize) -> anyhow::Result<(Duration, Timings)> {
    let mut jobs = JobsClient::connect(url.to_string()).await?;
    let prompts: String = (0..tasks).map(|i| format!("prompt {i}\n")).collect();
    let spec = v1::JobSpec {
        name: "bench".into(),
        settings: Some(v1::Settings {
            width: Some(16),
            height: Some(16),
            iterations: Some(1),
            upscale_model: Some("none".into()),
            ..Default::default()
        }),
        source: Some(v1::job_spec::Source::PromptsText(prompts)),
        ..Default::default()
    };
    jobs.submit_job(v1::SubmitJobRequest { spec: Some(spec) })
        .await?;
    let mut workers = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("bench-{i}");
        workers.push(ProtocolWorker::register_at(url, &Access::default(), &name).await);
    }
    let start = Instant::now();
    let handles: Vec<_> = workers
        .into_iter()
        .map(|w| tokio::spawn(client(w)))
        .collect();
    let mut all = Timings::default();
    for handle in handles {
        let timings = handle.await?;
        all.lease.extend(timings.lease);
        all.finish.extend(timings.finish);
    }
    let elapsed = start.elapsed();
    if all.finish.len() != tasks {
        bail!("{} tasks were finished, expected {tasks}", all.finish.len());
    }
    Ok((elapsed, all))
}

/// One protocol client: leases and finishes tasks until none is left.
async fn client(mut worker: ProtocolWorker) -> Timings {
    let mut timings = Timings::default();
    loop {
        let started = Instant::now();
        let Some(task) = worker.lease(0).await else {
            return timings;
        };
        timings.lease.push(started.elapsed());
        let started = Instant::now();
        let verdict = worker.finish(&task).await;
        assert_eq!(verdict, v1::CompletionVerdict::Accepted, "{}", task.task_id);
        timings.finish.push(started.elapsed());
    }
}

/// The `q` quantile of `samples`, in milliseconds.
fn percentile(samples: &[Duration], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}
