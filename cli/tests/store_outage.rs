//! A coordinator whose Redis dies and comes back (issue 27, item 2): while the store is down,
//! `/healthz` says NOT_SERVING, `/metrics` still answers, with `tessera_state_store_up 0`, and
//! `tessera status` says that the state store, not the coordinator, is down; once Redis is back,
//! all three recover. Every wait is for the answer to change, polled, never a fixed pause.

mod common;

use std::net::SocketAddr;

use common::{coordinator, tessera, SMALL};
use tempfile::TempDir;
use tessera_tests::scrape::{http_get, Scrape};
use tessera_tests::RedisServer;

/// Polls `probe` until it returns `Some`, for at most a minute (a hang, not a slow answer).
async fn until<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    let waiting = async {
        loop {
            if let Some(found) = probe() {
                return found;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), waiting)
        .await
        .expect("the coordinator's answer changed")
}

fn health(metrics: SocketAddr) -> String {
    http_get(metrics, "/healthz").unwrap().0
}

fn store_up(metrics: SocketAddr) -> Option<f64> {
    Scrape::get(metrics)
        .unwrap()
        .value("tessera_state_store_up", &[])
}

#[tokio::test]
async fn while_redis_is_down_health_metrics_and_status_say_so_and_recover_after() {
    let mut redis = RedisServer::start_durable().unwrap();
    let store = TempDir::new().unwrap();
    let redis_url = redis.url();
    let service = coordinator(store.path(), &["--redis", &redis_url], "127.0.0.1:0");
    let (url, metrics) = (service.url(), service.metrics.expect("metrics served"));
    let prompts = store.path().join("prompts.txt");
    std::fs::write(&prompts, "a lighthouse\n").unwrap();
    let submit = [&["submit", prompts.to_str().unwrap()][..], &SMALL].concat();
    let job = tessera(&url, &submit).await.ok().stdout.trim().to_string();
    assert_eq!(store_up(metrics), Some(1.0));

    redis.kill();
    let down = until(|| Some(health(metrics)).filter(|h| !h.starts_with("HTTP/1.1 200"))).await;
    assert!(down.starts_with("HTTP/1.1 503"), "{down}");
    let scrape = Scrape::get(metrics).expect("/metrics answers while Redis is down");
    assert_eq!(scrape.value("tessera_state_store_up", &[]), Some(0.0));
    assert!(
        scrape.value("tessera_tasks", &[("state", "queued")]) == Some(1.0),
        "the farm gauges keep the values last read"
    );
    let status = tessera(&url, &["status", &job]).await;
    assert_eq!(status.code, 2, "{status:?}");
    assert!(
        status.stderr.contains(&format!(
            "the coordinator at {url} answers, but its state store does not"
        )),
        "{status:?}"
    );
    assert!(status.stderr.contains("Redis at 127.0.0.1:"), "{status:?}");
    assert!(!status.stderr.contains("tessera up"), "{status:?}");

    redis.restart().unwrap();
    until(|| Some(()).filter(|()| health(metrics).starts_with("HTTP/1.1 200"))).await;
    until(|| store_up(metrics).filter(|&up| up == 1.0)).await;
    let status = tessera(&url, &["--json", "status", &job]).await.ok();
    assert_eq!(status.json()["job_id"], job.as_str(), "{status:?}");
}
