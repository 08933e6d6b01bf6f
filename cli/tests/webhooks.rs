//! Completion webhooks (issue 22, item 2) through real processes: a coordinator, the real
//! `tessera` binary, a protocol-only worker, and a webhook receiver run by the test, which
//! checks every signature with its own HMAC. Deliveries survive a coordinator killed with
//! SIGKILL in the middle of one, and addresses the farm does not allow are refused at
//! submission.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{coordinator, tessera, SMALL};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tempfile::TempDir;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_tests::protocol::ProtocolWorker;
use tessera_tests::scrape::Scrape;
use tokio::sync::mpsc;

const SECRET: &str = "whsec-test-5f2b";
/// Longest the test waits for one delivery.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

/// How the receiver answers a request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    Status(u16),
    /// Never answers: the request is in flight until the sender goes away.
    Hold,
}

/// One request the receiver got, and how it answered.
#[derive(Clone, Debug)]
struct Delivery {
    id: String,
    event: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    answer: Answer,
}

impl Delivery {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Whether the signature is HMAC-SHA256 of `TIMESTAMP.BODY` under the secret, computed
    /// here independently of the coordinator's code.
    fn signed(&self) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(self.timestamp.as_bytes());
        mac.update(b".");
        mac.update(&self.body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.signature == format!("sha256={hex}")
    }
}

/// What the receiver shares with its handler: the answers to give, in order (then 200), and
/// where to report each request.
struct Script {
    answers: Mutex<VecDeque<Answer>>,
    seen: mpsc::UnboundedSender<Delivery>,
}

/// A webhook receiver on a free loopback port.
struct Receiver {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Delivery>,
}

impl Receiver {
    /// Starts one that answers `answers` in turn, then 200 to everything.
    async fn start(answers: &[Answer]) -> Receiver {
        let (tx, seen) = mpsc::unbounded_channel();
        let script = Arc::new(Script {
            answers: Mutex::new(answers.iter().copied().collect()),
            seen: tx,
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(script);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    async fn next(&mut self) -> Delivery {
        tokio::time::timeout(DELIVERY_WAIT, self.seen.recv())
            .await
            .expect("a delivery arrives in time")
            .expect("the receiver runs")
    }
}

async fn receive(State(script): State<Arc<Script>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let answer = script
        .answers
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Answer::Status(200));
    let delivery = Delivery {
        id: header("x-tessera-delivery"),
        event: header("x-tessera-event"),
        timestamp: header("x-tessera-timestamp"),
        signature: header("x-tessera-signature"),
        body: body.to_vec(),
        answer,
    };
    let _ = script.seen.send(delivery);
    match answer {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap(),
        Answer::Hold => std::future::pending().await,
    }
}

/// The coordinator flags of a farm with its state in `state`, whose webhooks may reach
/// loopback, retried quickly.
fn webhook_flags(state: &[&str], secret: &Path) -> Vec<String> {
    let webhooks = [
        "--webhook-allow",
        "127.0.0.1",
        "--webhook-secret-file",
        secret.to_str().unwrap(),
        "--webhook-backoff-ms",
        "50",
        "--webhook-timeout-ms",
        "1000",
    ];
    state
        .iter()
        .chain(&webhooks)
        .map(|f| f.to_string())
        .collect()
}

#[tokio::test]
async fn every_event_arrives_signed_after_the_coordinator_is_killed_mid_delivery() {
    let dir = TempDir::new().unwrap();
    let state = dir.path().join("state");
    let embedded = ["--embedded", "--state-dir", state.to_str().unwrap()];
    survive_a_killed_coordinator(&dir, &embedded).await;
}

#[tokio::test]
async fn every_event_arrives_signed_after_a_coordinator_on_redis_is_killed_mid_delivery() {
    let dir = TempDir::new().unwrap();
    let redis = tessera_tests::RedisServer::start().unwrap();
    survive_a_killed_coordinator(&dir, &["--redis", &redis.url()]).await;
}

/// Two failed attempts at the first event, a coordinator killed with SIGKILL during the third
/// and started again on the same state: the receiver gets every event, each signed, the
/// retried one with the same id and body, and the job's end last.
async fn survive_a_killed_coordinator(dir: &TempDir, state: &[&str]) {
    let (store, secret) = (dir.path().join("store"), dir.path().join("secret"));
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let flags = webhook_flags(state, &secret);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut service = coordinator(&store, &flags, "127.0.0.1:0");
    let mut receiver =
        Receiver::start(&[Answer::Status(500), Answer::Status(503), Answer::Hold]).await;

    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a lighthouse\na harbour\n").unwrap();
    let webhook = receiver.url();
    let submit = [
        &["submit", prompts.to_str().unwrap(), "--webhook", &webhook][..],
        &SMALL,
    ]
    .concat();
    let job = tessera(&service.url(), &submit)
        .await
        .ok()
        .stdout
        .trim()
        .to_string();
    let mut worker = ProtocolWorker::register(&service, "w").await;
    for _ in 0..2 {
        let task = worker.lease(0).await.expect("a render is queued");
        worker.finish(&task).await;
    }

    // Two failed attempts at the first event, then the coordinator dies during the third.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(receiver.next().await);
    }
    assert_eq!(seen[2].answer, Answer::Hold);
    service.kill();
    let service = coordinator(&store, &flags, "127.0.0.1:0");

    let mut delivered: BTreeMap<String, Delivery> = BTreeMap::new();
    while delivered.len() < 3 {
        let delivery = receiver.next().await;
        if delivery.answer == Answer::Status(200) {
            assert!(
                delivered
                    .insert(delivery.id.clone(), delivery.clone())
                    .is_none(),
                "{} was accepted once, so it is not sent again",
                delivery.id
            );
        }
        seen.push(delivery);
    }

    for d in &seen {
        assert!(d.signed(), "a valid signature on {d:?}");
        let body = d.json();
        assert_eq!(body["id"], d.id.as_str(), "the body names the delivery id");
        assert_eq!(body["type"], d.event.as_str());
        assert_eq!(body["job"], job.as_str());
        let original = &delivered[&d.id];
        assert_eq!(
            d.body, original.body,
            "every attempt at {} sends the same event",
            d.id
        );
    }
    assert!(
        seen[..3].iter().all(|d| d.id == seen[0].id),
        "the failed event is retried first"
    );

    let mut client = JobsClient::connect(service.url()).await.unwrap();
    let results = tessera_tests::jobs::results(&mut client, &job).await;
    let mut announced: Vec<serde_json::Value> = delivered
        .values()
        .map(Delivery::json)
        .filter(|b| b["type"] == "result")
        .collect();
    announced.sort_by_key(|b| b["result"]["index"].as_u64());
    assert_eq!(announced.len(), 2, "{announced:?}");
    for (i, body) in announced.iter().enumerate() {
        assert_eq!(body["result"]["index"], i as u64);
        assert_eq!(body["state"], "done");
        let listed = &results[i];
        let output = listed
            .output
            .as_ref()
            .expect("a done result has its picture");
        assert_eq!(body["result"]["sha256"], output.sha256.as_str());
        assert_eq!(body["result"]["size"], output.size);
        assert_eq!(body["result"]["prompt"], listed.prompt.as_str());
        assert_eq!(body["fetch"]["job_id"], job.as_str());
    }
    let last = seen.iter().rev().find(|d| d.answer == Answer::Status(200));
    let end = last.unwrap().json();
    assert_eq!(
        (end["type"].as_str(), end["state"].as_str()),
        (Some("job_done"), Some("succeeded")),
        "the job's end comes last"
    );
    assert_eq!(end["results"]["done"], 2);

    // The restarted coordinator shows the deliveries and counts them.
    let status = wait_for_status(&service.url(), &job, |w| w["delivered"] == 3).await;
    assert_eq!(status["pending"], false);
    assert!(status["failures"].as_u64() >= Some(2), "{status}");
    assert_eq!(status["dropped"], 0);
    assert_eq!(status["url"], webhook.as_str());
    let table = tessera(&service.url(), &["status", &job]).await.ok().stdout;
    assert!(table.contains("3 delivered"), "{table}");
    let scrape = Scrape::get(service.metrics.unwrap()).unwrap();
    assert_eq!(
        scrape.value(
            "tessera_webhook_deliveries_total",
            &[("outcome", "delivered")]
        ),
        Some(3.0)
    );
}

/// `tessera --json status JOB`'s webhook once `ready` holds for it: the receiver hears of a
/// delivery before the coordinator records it.
async fn wait_for_status(
    url: &str,
    job: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
    loop {
        let status = tessera(url, &["--json", "status", job]).await.ok().json();
        let webhook = status["webhook"].clone();
        if ready(&webhook) {
            return webhook;
        }
        assert!(tokio::time::Instant::now() < deadline, "{webhook}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn webhooks_to_addresses_the_farm_does_not_allow_are_refused_at_submission() {
    let dir = TempDir::new().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a lighthouse\n").unwrap();
    let secret_flag = ["--webhook-secret-file", secret.to_str().unwrap()];
    let open = coordinator(
        &dir.path().join("a"),
        &[&["--embedded"][..], &secret_flag].concat(),
        "127.0.0.1:0",
    );
    let private_only = coordinator(
        &dir.path().join("b"),
        &[
            &["--embedded", "--webhook-allow", "10.0.0.0/8"][..],
            &secret_flag,
        ]
        .concat(),
        "127.0.0.1:0",
    );
    let cases = [
        (
            &open,
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254, a link-local",
        ),
        (
            &open,
            "http://127.0.0.1:9/hook",
            "127.0.0.1, a loopback address",
        ),
        (&open, "http://localhost:9/hook", "a loopback address"),
        (&open, "http://[::ffff:10.0.0.1]/hook", "a private address"),
        (
            &open,
            "ftp://example.com/hook",
            "is not an http:// or https:// URL",
        ),
        (&open, "hooks.example.com/x", "is not a URL"),
        (
            &private_only,
            "http://127.0.0.1:9/hook",
            "a loopback address",
        ),
        (
            &private_only,
            "https://203.0.113.7/hook",
            "not in the farm's --webhook-allow list",
        ),
    ];
    for (service, webhook, expected) in cases {
        let submit = [
            &["submit", prompts.to_str().unwrap(), "--webhook", webhook][..],
            &SMALL,
        ]
        .concat();
        let run = tessera(&service.url(), &submit).await;
        assert_ne!(run.code, 0, "{webhook} is refused: {run:?}");
        assert!(run.stderr.contains(expected), "{webhook}: {}", run.stderr);
    }
    for service in [&open, &private_only] {
        let jobs = tessera(&service.url(), &["--json", "jobs"])
            .await
            .ok()
            .json();
        assert_eq!(jobs["total"], 0, "a refused job is not stored");
    }
}
