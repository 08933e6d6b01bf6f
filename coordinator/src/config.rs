//! The coordinator's configuration, from command-line flags and `TESSERA_*` environment
//! variables (flags win).

use crate::auth::Auth;
use crate::state::Policy;
use crate::webhooks::allow::{AllowEntry, AllowList};
use crate::webhooks::sign::Secret;
use crate::webhooks::{Retry, Webhooks};
use anyhow::Context;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tessera_core::job::{Limits, ModelCatalog, UpscaleModel};
use tessera_telemetry::LogFormat;

/// `tessera-coordinator`: serves the `tessera.v1` API over gRPC.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Config {
    /// Address to serve gRPC on; port 0 picks a free port. The bound address is printed on
    /// standard output as `tessera-coordinator listening on ADDR`.
    #[arg(long, env = "TESSERA_LISTEN", default_value = "127.0.0.1:7470")]
    pub listen: SocketAddr,

    /// Address of the Prometheus endpoint `GET /metrics`; port 0 picks a free port. The bound
    /// address is printed on standard output as `tessera-coordinator metrics on ADDR`.
    #[arg(long, env = "TESSERA_METRICS_LISTEN", default_value = "0.0.0.0:9464")]
    pub metrics_listen: SocketAddr,

    /// Log lines on standard error: `human` or `json`. Spans are also exported over OTLP when
    /// OTEL_EXPORTER_OTLP_ENDPOINT is set (service name: OTEL_SERVICE_NAME, default
    /// tessera-coordinator).
    #[arg(long, env = "TESSERA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// PEM certificate chain to serve gRPC over TLS with (with --tls-key); clients then use
    /// https:// URLs.
    #[arg(long, env = "TESSERA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "TESSERA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Auth file (YAML): hashed worker, client and admin tokens, and per-tenant limits. Without
    /// it the coordinator is open to anyone who can reach it.
    #[arg(long, env = "TESSERA_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// Keep state in Redis at this URL (e.g. redis://127.0.0.1:6379/0); several coordinators
    /// may share it.
    #[arg(long, env = "TESSERA_REDIS", conflicts_with_all = ["embedded", "redis_sentinel"])]
    pub redis: Option<String>,

    /// Keep state in the Redis primary that these Sentinels (host:port, comma-separated) name
    /// for --redis-master-name, and follow it when they promote a replica: Redis with failover.
    #[arg(
        long,
        env = "TESSERA_REDIS_SENTINEL",
        value_delimiter = ',',
        conflicts_with = "embedded",
        requires = "redis_master_name"
    )]
    pub redis_sentinel: Vec<String>,

    /// The master name the Sentinels watch (their `sentinel monitor NAME ...`).
    #[arg(long, env = "TESSERA_REDIS_MASTER_NAME", requires = "redis_sentinel")]
    pub redis_master_name: Option<String>,

    /// With --redis-sentinel: replicas every state transition must reach before it is
    /// answered (Redis `WAIT`), so a failover loses nothing acknowledged; 0 answers once the
    /// primary has it.
    #[arg(long, env = "TESSERA_REDIS_WAIT_REPLICAS", default_value_t = 0,
          requires = "redis_sentinel", value_parser = clap::value_parser!(u32).range(0..=16))]
    pub redis_wait_replicas: u32,

    /// With --redis-sentinel: the database number on the primary.
    #[arg(
        long,
        env = "TESSERA_REDIS_DB",
        default_value_t = 0,
        requires = "redis_sentinel"
    )]
    pub redis_db: i64,

    /// PEM CA certificate to trust for a rediss:// (TLS) Redis URL (default: the system's roots).
    #[arg(long, env = "TESSERA_REDIS_CA", requires = "redis")]
    pub redis_ca: Option<PathBuf>,

    /// Keep state in this process instead of Redis (one coordinator per farm).
    #[arg(long, env = "TESSERA_EMBEDDED")]
    pub embedded: bool,

    /// With --embedded: persist the state in this directory, so a restart loses nothing.
    /// Without it the state lives in memory only.
    #[arg(long, env = "TESSERA_STATE_DIR", requires = "embedded")]
    pub state_dir: Option<PathBuf>,

    /// Prefix of every Redis key, so several farms can share one Redis. On Redis Cluster give
    /// it a hash tag (`{tessera}:`): every key then lives in one slot, as the atomic scripts
    /// need (see `state/keys.rs`).
    #[arg(long, env = "TESSERA_REDIS_PREFIX", default_value = "tessera:")]
    pub redis_prefix: String,

    /// Artifact store: a directory, or a URL (file:///dir, memory://, s3://bucket/prefix with
    /// the `s3` feature and AWS_* variables).
    #[arg(long, env = "TESSERA_STORE", default_value = ".tessera/artifacts")]
    pub store: String,

    /// How long a lease lasts without a heartbeat, in milliseconds (100 to a day: shorter
    /// than a heartbeat's round trip, every task would expire).
    #[arg(long, env = "TESSERA_LEASE_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub lease_ms: u64,

    /// How often expired leases are looked for, in milliseconds (default: a quarter lease,
    /// at most a second).
    #[arg(long, env = "TESSERA_REAP_MS", value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub reap_ms: Option<u64>,

    /// Longest a lease request waits for work, in milliseconds.
    #[arg(long, env = "TESSERA_MAX_WAIT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub max_wait_ms: u64,

    /// Failed attempts a task may have beyond its first before it fails for good.
    #[arg(long, env = "TESSERA_MAX_RETRIES", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub max_retries: u32,

    /// Expired leases a task may have before it fails for good.
    #[arg(long, env = "TESSERA_MAX_EXPIRIES", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_expiries: u32,

    /// Tasks of one job a worker failed and another worker then did, after which it gets no
    /// more of that job's tasks (0: never). A task that fails everywhere bans nobody.
    #[arg(long, env = "TESSERA_BAN_AFTER", default_value_t = 3)]
    pub ban_after: u32,

    /// Events kept per job for WatchJob.
    #[arg(long, env = "TESSERA_EVENTS_MAX", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub events_max: u64,

    /// Prompts (or pictures) per job.
    #[arg(long, env = "TESSERA_MAX_PROMPTS", default_value_t = 10_000,
          value_parser = positive_count)]
    pub max_prompts: usize,

    /// Results (prompts x seeds) per job.
    #[arg(long, env = "TESSERA_MAX_RESULTS", default_value_t = 100_000,
          value_parser = positive_count)]
    pub max_results: usize,

    /// Optimiser steps per render.
    #[arg(long, env = "TESSERA_MAX_ITERATIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_iterations: u32,

    /// Largest side of a generated picture.
    #[arg(long, env = "TESSERA_MAX_SIDE", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(16..=65_536))]
    pub max_side: u32,

    /// Largest upload (pictures, checkpoints), in bytes (64 KiB to 1 TiB).
    #[arg(long, env = "TESSERA_MAX_ARTIFACT_BYTES", default_value_t = 512 << 20,
          value_parser = clap::value_parser!(u64).range(1 << 16..=1 << 40))]
    pub max_artifact_bytes: u64,

    /// CLIP models jobs may use (comma-separated; default: the built-in catalogue).
    #[arg(long, env = "TESSERA_CLIP_MODELS", value_delimiter = ',')]
    pub clip_models: Vec<String>,

    /// VQGAN models jobs may use (comma-separated).
    #[arg(long, env = "TESSERA_VQGAN_MODELS", value_delimiter = ',')]
    pub vqgan_models: Vec<String>,

    /// Upscale models jobs may use, as NAME:SCALE (comma-separated).
    #[arg(long, env = "TESSERA_UPSCALE_MODELS", value_delimiter = ',', value_parser = parse_upscale_model)]
    pub upscale_models: Vec<UpscaleModel>,

    /// Where job webhooks may point (comma-separated): host names (hooks.example.com),
    /// patterns (*.example.com), addresses and CIDR ranges (10.0.0.0/8). Empty: any public
    /// address. Internal addresses (loopback, link-local with the cloud metadata endpoint,
    /// private ranges) are reached only when an address or CIDR entry covers them.
    #[arg(long, env = "TESSERA_WEBHOOK_ALLOW", value_delimiter = ',')]
    pub webhook_allow: Vec<AllowEntry>,

    /// File holding the secret that signs the webhook deliveries of jobs whose tenant has no
    /// `webhook_secret` in the auth file (and of jobs without a tenant).
    #[arg(long, env = "TESSERA_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,

    /// Pause after a failed webhook attempt, in milliseconds; it doubles with each further
    /// failure of the same event, up to five minutes.
    #[arg(long, env = "TESSERA_WEBHOOK_BACKOFF_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..=300_000))]
    pub webhook_backoff_ms: u64,

    /// How long one webhook event is retried before it is given up, in milliseconds (default
    /// a day, at most 30 days).
    #[arg(long, env = "TESSERA_WEBHOOK_RETRY_MS", default_value_t = 86_400_000,
          value_parser = clap::value_parser!(u64).range(0..=2_592_000_000))]
    pub webhook_retry_ms: u64,

    /// Longest one webhook attempt may take (connecting, sending, the answer), in milliseconds.
    #[arg(long, env = "TESSERA_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub webhook_timeout_ms: u64,
}

/// A count of at least 1 and at most a billion, for the limits of one job: a limit of 0 would
/// refuse every job.
fn positive_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=1_000_000_000).contains(&n) => Ok(n),
        _ => Err(format!("{text} is not in 1..=1000000000")),
    }
}

fn parse_upscale_model(text: &str) -> Result<UpscaleModel, String> {
    let (name, scale) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("'{text}' is not NAME:SCALE, e.g. realesrgan-x4plus:4"))?;
    let scale = scale
        .parse()
        .ok()
        .filter(|s| (1..=16).contains(s))
        .ok_or_else(|| format!("scale of '{text}' must be a whole number from 1 to 16"))?;
    Ok(UpscaleModel {
        name: name.to_string(),
        scale,
    })
}

impl Config {
    /// Whether the state lives in Redis (at a URL or behind Sentinels), which a starting
    /// coordinator waits for.
    pub fn uses_redis(&self) -> bool {
        self.redis.is_some() || !self.redis_sentinel.is_empty()
    }

    /// The failure policy.
    pub fn policy(&self) -> Policy {
        Policy {
            max_retries: self.max_retries,
            max_expiries: self.max_expiries,
            ban_after: self.ban_after,
            events_max: self.events_max,
        }
    }

    /// The limits of one job.
    pub fn limits(&self) -> Limits {
        Limits {
            max_prompts: self.max_prompts,
            max_results: self.max_results,
            max_iterations: self.max_iterations,
            max_side: self.max_side,
            ..Limits::default()
        }
    }

    /// The models jobs may name: the built-in catalogue, with each family replaced when its
    /// flag is given.
    pub fn catalog(&self) -> ModelCatalog {
        let mut catalog = ModelCatalog::default();
        if !self.clip_models.is_empty() {
            catalog.clip = self.clip_models.clone();
        }
        if !self.vqgan_models.is_empty() {
            catalog.vqgan = self.vqgan_models.clone();
        }
        if !self.upscale_models.is_empty() {
            catalog.upscale = self.upscale_models.clone();
        }
        catalog
    }

    /// Where webhooks may go and how they are signed and retried; `auth` holds the tenants'
    /// own secrets and default URLs.
    pub fn webhooks(&self, auth: Option<Arc<Auth>>) -> anyhow::Result<Webhooks> {
        let farm_secret = match &self.webhook_secret_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading --webhook-secret-file {}", path.display()))?;
                let secret = Secret::new(&text);
                Some(secret.with_context(|| {
                    format!("--webhook-secret-file {} is empty", path.display())
                })?)
            }
            None => None,
        };
        Ok(Webhooks {
            allow: AllowList::new(self.webhook_allow.clone()),
            farm_secret,
            auth,
            retry: Retry {
                first_ms: self.webhook_backoff_ms,
                for_ms: self.webhook_retry_ms,
                timeout_ms: self.webhook_timeout_ms,
            },
        })
    }

    /// How often the reaper runs.
    pub fn reap_ms(&self) -> u64 {
        self.reap_ms
            .unwrap_or((self.lease_ms / 4).clamp(10, 1_000))
            .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_build_the_catalogue_and_policy() {
        let config = Config::try_parse_from([
            "tessera-coordinator",
            "--embedded",
            "--upscale-models",
            "a:2,b-x4:4",
            "--max-retries",
            "5",
        ])
        .unwrap();
        assert_eq!(config.catalog().upscale[1].name, "b-x4");
        assert_eq!(config.catalog().upscale[0].scale, 2);
        assert_eq!(config.catalog().clip, ModelCatalog::default().clip);
        assert_eq!(config.policy().max_retries, 5);
        let err = Config::try_parse_from(["c", "--embedded", "--upscale-models", "x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not NAME:SCALE"), "{err}");
        assert!(Config::try_parse_from(["c", "--embedded", "--redis", "redis://x"]).is_err());
        let sentinel = [
            "c",
            "--redis-sentinel",
            "a:26379,b:26379",
            "--redis-master-name",
            "m",
        ];
        let config = Config::try_parse_from(sentinel).unwrap();
        assert_eq!(config.redis_sentinel, ["a:26379", "b:26379"]);
        assert!(config.uses_redis());
        assert!(Config::try_parse_from(["c", "--redis-sentinel", "a:26379"]).is_err());
    }

    #[test]
    fn a_webhook_allow_entry_that_is_no_host_address_or_range_refuses_the_start() {
        let err = Config::try_parse_from(["c", "--embedded", "--webhook-allow", "10.0.0.0/8,a b"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--webhook-allow") && err.contains("'a b' is not"),
            "{err}"
        );
        let config =
            Config::try_parse_from(["c", "--embedded", "--webhook-allow", "*.acme.io,::1"])
                .unwrap();
        assert_eq!(config.webhook_allow.len(), 2);
    }

    #[test]
    fn limits_of_zero_or_beyond_reason_are_refused_with_their_range() {
        for (flag, value, range) in [
            ("--lease-ms", "0", "100..=86400000"),
            ("--max-side", "0", "16..=65536"),
            ("--max-artifact-bytes", "0", "65536..=1099511627776"),
            ("--max-prompts", "0", "1..=1000000000"),
            ("--max-results", "0", "1..=1000000000"),
            ("--max-iterations", "0", "1..=1000000"),
            ("--max-expiries", "0", "1..=10000"),
            ("--events-max", "0", "1..=100000000"),
            ("--reap-ms", "0", "1..=60000"),
            ("--webhook-backoff-ms", "0", "10..=300000"),
            ("--webhook-timeout-ms", "0", "100..=300000"),
        ] {
            let err = Config::try_parse_from(["c", "--embedded", flag, value])
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag) && err.contains(range), "{flag}: {err}");
        }
    }
}
