//! A real Prometheus on loopback (Debian's `prometheus` package, which scripts/setup.sh
//! installs), and `promtool` from the same package: tests hand it a configuration and rules,
//! wait on its HTTP API for the scrape to be up, and evaluate queries through that API as
//! Grafana, KEDA and the alert manager would.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use tempfile::TempDir;

use crate::scrape::http_request;
use crate::{free_port, system_tool, wait_listening};

/// One series of a query's answer: its labels and value (NaN, e.g. a quantile of no
/// observations, stays NaN).
#[derive(Clone, Debug)]
pub struct Series {
    /// Its labels (`__name__` included when the query kept it).
    pub labels: serde_json::Map<String, Value>,
    /// Its value at the query's time.
    pub value: f64,
}

/// A `prometheus` server on a free port with its data in a temporary directory; killed on
/// drop.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus on `config` (a `prometheus.yml`'s text, whose `rule_files` may name
    /// `rules.yml`: relative paths are read beside it, where `rules` is written) and waits until it is ready.
    pub fn start(config: &str, rules: &str) -> anyhow::Result<Prometheus> {
        let program = system_tool("prometheus", "prometheus")?;
        let dir = TempDir::new()?;
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        std::fs::write(dir.path().join("rules.yml"), rules)?;
        let port = free_port();
        let mut child = Command::new(program)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log"))?)
            .spawn()
            .context("cannot start prometheus")?;
        wait_listening(&mut child, port, "prometheus")?;
        let prometheus = Prometheus {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        prometheus.until("ready", Duration::from_secs(60), |p| {
            Ok(p.get("/-/ready")?.0 == 200)
        })?;
        Ok(prometheus)
    }

    /// What Prometheus logged, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Polls `done` (the event waited on, named `what` in the error) until it holds or
    /// `bound` passes; Prometheus scrapes and evaluates on its own clock, so there is no event
    /// to block on but its API's answers.
    pub fn until(
        &self,
        what: &str,
        bound: Duration,
        mut done: impl FnMut(&Prometheus) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        while !done(self)? {
            if start.elapsed() > bound {
                bail!(
                    "Prometheus: {what} did not happen within {bound:?}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// The active scrape targets (`/api/v1/targets`), each a JSON object with `labels`,
    /// `health` and `lastError`.
    pub fn targets(&self) -> anyhow::Result<Vec<Value>> {
        let data = self.api("/api/v1/targets?state=active")?;
        Ok(data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The rule groups as Prometheus evaluates them (`/api/v1/rules`).
    pub fn rules(&self) -> anyhow::Result<Vec<Value>> {
        let data = self.api("/api/v1/rules")?;
        Ok(data["groups"].as_array().cloned().unwrap_or_default())
    }

    /// Evaluates `expr` now (`/api/v1/query`); an expression Prometheus refuses is an error
    /// with its reason.
    pub fn query(&self, expr: &str) -> anyhow::Result<Vec<Series>> {
        let encoded: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let data = self.api(&format!("/api/v1/query?query={encoded}"))?;
        let result = match data["resultType"].as_str() {
            Some("vector") => data["result"].as_array().cloned().unwrap_or_default(),
            Some("scalar") => vec![serde_json::json!({"metric": {}, "value": data["result"]})],
            other => bail!("{expr}: a {other:?} result"),
        };
        result
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().context("a sample value")?;
                Ok(Series {
                    labels: s["metric"].as_object().cloned().unwrap_or_default(),
                    value: value.parse().unwrap_or(f64::NAN),
                })
            })
            .collect()
    }

    /// The `data` of a successful API answer.
    fn api(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get(path)?;
        let answer: Value =
            serde_json::from_str(&body).with_context(|| format!("GET {path}: {status} {body}"))?;
        if answer["status"] != "success" {
            bail!(
                "GET {path}: {status} {}: {}",
                answer["errorType"],
                answer["error"]
            );
        }
        Ok(answer["data"].clone())
    }

    fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let (status, _, body) = http_request(self.addr, "GET", path, &[], b"")?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `promtool` with `args` in `dir` and returns what it printed; its failure is an error
/// carrying that output.
pub fn promtool(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(system_tool("promtool", "prometheus")?)
        .args(args)
        .current_dir(dir)
        .output()
        .context("cannot run promtool")?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("promtool {args:?} failed ({}):\n{printed}", output.status);
    }
    Ok(printed)
}
