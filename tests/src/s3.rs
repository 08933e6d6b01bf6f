//! A real S3 API on loopback: moto's server (`moto[server]` from PyPI, installed by
//! scripts/setup.sh into `.deps/venv`), which speaks the S3 REST API over plain HTTP, and a
//! relay in front of it that a test can cut, the way an S3 endpoint goes away for its clients
//! (moto keeps its objects in memory only, so stopping the server itself would lose the bucket
//! that a real store keeps through an outage).

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::scrape::http_request;
use crate::{dependency, free_port, wait_listening};

/// The bucket every test server is started with.
pub const BUCKET: &str = "tessera";

/// Requests moto answers before it checks credentials, when started with a user: the bucket
/// and the three IAM calls that make the user, its key and its policy.
const SETUP_REQUESTS: usize = 4;

/// A moto S3 server on a free loopback port, with bucket [`BUCKET`], reached through a
/// [`Relay`]; killed on drop.
pub struct S3Server {
    child: Child,
    /// Where moto itself listens (for the test's own requests, which the relay's cuts spare).
    direct: SocketAddr,
    relay: Relay,
    credentials: (String, String),
    log: TempDir,
}

impl S3Server {
    /// Starts moto accepting any credentials, the way most tests want it.
    pub fn start() -> anyhow::Result<S3Server> {
        let server = Self::launch(None)?;
        server.create_bucket(BUCKET)?;
        Ok(server)
    }

    /// Starts moto checking credentials: an IAM user allowed everything is made, and only its
    /// key (see [`S3Server::env`]) is accepted, so a test can present wrong ones.
    pub fn start_with_user() -> anyhow::Result<S3Server> {
        let mut server = Self::launch(Some(SETUP_REQUESTS))?;
        server.create_bucket(BUCKET)?;
        server.credentials = server.make_user()?;
        Ok(server)
    }

    fn launch(checked_after: Option<usize>) -> anyhow::Result<S3Server> {
        let program = dependency("venv/bin/moto_server")?;
        let log = TempDir::new()?;
        let port = free_port();
        let mut command = Command::new(program);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log.path().join("moto.log"))?)
            .stderr(std::fs::File::create(log.path().join("moto.err"))?);
        if let Some(count) = checked_after {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", count.to_string());
        }
        let mut child = command.spawn().context("cannot start moto_server")?;
        wait_listening(&mut child, port, "moto_server")?;
        let direct = SocketAddr::from(([127, 0, 0, 1], port));
        Ok(S3Server {
            child,
            direct,
            relay: Relay::start(direct)?,
            credentials: ("tessera-test".into(), "tessera-test-secret".into()),
            log,
        })
    }

    /// The `AWS_*` variables a coordinator is given for this server, as the gpu-cluster
    /// overlay's `object-store.env` gives them (plus plain HTTP, which only a test allows).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ACCESS_KEY_ID", self.credentials.0.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.credentials.1.clone()),
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The endpoint clients use: the relay's URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.relay.addr)
    }

    /// The relay clients go through, for cutting them off.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// What moto logged, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path().join("moto.err")).unwrap_or_default()
    }

    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        self.expect("PUT", &format!("/{bucket}"), 200, "create the bucket")?;
        Ok(())
    }

    /// Deletes object `key` of [`BUCKET`] behind its users' backs.
    pub fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.expect("DELETE", &object(key), 204, "delete the object")?;
        Ok(())
    }

    /// The keys stored in [`BUCKET`] under `prefix` (at most a thousand, one listing page).
    pub fn keys(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let path = format!("/{BUCKET}?list-type=2&prefix={prefix}");
        let body = self.expect("GET", &path, 200, "list the bucket")?;
        Ok(xml_values(&body, "Key"))
    }

    /// The ETag of object `key`: S3 makes a multipart upload's `HASH-PARTS`.
    pub fn etag(&self, key: &str) -> anyhow::Result<String> {
        let (status, head, _) = self.s3_request("HEAD", &object(key))?;
        if status != 200 {
            bail!("HEAD {key}: {head}");
        }
        head.lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("etag")
                    .then(|| value.trim().trim_matches('"').to_string())
            })
            .with_context(|| format!("HEAD {key} has no ETag: {head}"))
    }

    /// Makes an IAM user allowed everything and returns its access key and secret.
    fn make_user(&self) -> anyhow::Result<(String, String)> {
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;
        self.iam(&[("Action", "CreateUser")])?;
        let key = self.iam(&[("Action", "CreateAccessKey")])?;
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("PolicyName", "everything"),
            ("PolicyDocument", policy),
        ])?;
        let id = xml_values(&key, "AccessKeyId");
        let secret = xml_values(&key, "SecretAccessKey");
        match (id.first(), secret.first()) {
            (Some(id), Some(secret)) => Ok((id.clone(), secret.clone())),
            _ => bail!("CreateAccessKey answered no key: {key}"),
        }
    }

    /// One IAM call for user `tessera` (moto reads the service from the credential scope).
    fn iam(&self, parameters: &[(&str, &str)]) -> anyhow::Result<String> {
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(parameters)
            .append_pair("UserName", "tessera")
            .append_pair("Version", "2010-05-08")
            .finish();
        let (status, head, body) = http_request(
            self.direct,
            "POST",
            "/",
            &[
                ("Authorization", &setup_authorization("iam")),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            form.as_bytes(),
        )?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if status != 200 {
            bail!("IAM {parameters:?}: {head}\n{body}\n{}", self.log());
        }
        Ok(body)
    }

    /// An S3 request of the test's own, straight to moto (past the relay).
    fn s3_request(&self, method: &str, path: &str) -> anyhow::Result<(u16, String, Vec<u8>)> {
        let authorization = setup_authorization("s3");
        let headers = [("Authorization", authorization.as_str())];
        http_request(self.direct, method, path, &headers, b"")
    }

    /// [`S3Server::s3_request`] that fails unless moto answers `wanted`.
    fn expect(&self, method: &str, path: &str, wanted: u16, what: &str) -> anyhow::Result<String> {
        let (status, head, answer) = self.s3_request(method, path)?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if status != wanted {
            bail!("cannot {what} ({method} {path}): {head}\n{answer}");
        }
        Ok(answer)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of `key` in [`BUCKET`].
fn object(key: &str) -> String {
    format!("/{BUCKET}/{key}")
}

/// An unsigned Authorization header naming `service`, which moto routes by; it checks no
/// signature in its first requests, which are the test's set-up.
fn setup_authorization(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=setup/20240101/us-east-1/{service}/aws4_request, \
         SignedHeaders=host, Signature=0"
    )
}

/// The text of every `<tag>` element in `xml`.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(value, _)| value.to_string()))
        .collect()
}

/// A TCP relay from a loopback port of its own to `target`, which a test can cut: while cut,
/// every connection (open or new) is closed at once, as clients of a stopped server see it.
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    /// Listens on a free loopback port and relays each connection to `target`.
    pub fn start(target: SocketAddr) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let relay = Relay {
            addr: listener.local_addr()?,
            cut: Arc::new(AtomicBool::new(false)),
            open: Arc::new(Mutex::new(Vec::new())),
        };
        let (cut, open) = (relay.cut.clone(), relay.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                } else if let Ok(server) = TcpStream::connect(target) {
                    relay_connection(client, server, &open);
                }
            }
        });
        Ok(relay)
    }

    /// Cuts every connection, and every new one until [`Relay::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies bytes both ways between `client` and `server` on two threads, keeping handles in
/// `open` so a cut can close them; either side's end closes both.
fn relay_connection(client: TcpStream, server: TcpStream, open: &Mutex<Vec<TcpStream>>) {
    let handles = [client.try_clone(), server.try_clone()];
    let mut open = open.lock().unwrap();
    open.retain(|s| s.peer_addr().is_ok());
    open.extend(handles.into_iter().flatten());
    for (mut from, mut to) in [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ]
    .into_iter()
    .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
    {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
}
