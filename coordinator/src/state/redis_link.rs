//! Where the Redis state store sends its commands: one server named by a URL, or the primary
//! that Redis Sentinel names for a master name. A connection manager reconnects only to the
//! address it was made for, which after a Sentinel failover is the dead (or demoted) primary;
//! so with Sentinel every failed command asks Sentinel again, and when it names another
//! primary the link moves there, and the next command goes to the new primary. Commands are
//! never replayed here: the caller hears the failure (as it would during any outage) and
//! retries, which the state machine's attempt numbers make safe.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{Arg, Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Longest a question to the Sentinels (and the connection to the primary they name) may take,
/// so a coordinator cut off from them fails its command instead of waiting on them.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a script's reply waits for its writes to reach the replicas.
const WAIT_TIMEOUT_MS: u64 = 2_000;

/// Who names the Redis server to talk to.
enum Source {
    /// A fixed server.
    Fixed,
    /// The primary Sentinel names.
    Sentinel(Box<Watched>),
}

/// A master name and the Sentinels that watch it.
struct Watched {
    sentinel: tokio::sync::Mutex<Sentinel>,
    master: String,
    node: SentinelNodeConnectionInfo,
}

/// The server commands go to now.
#[derive(Clone)]
struct Current {
    client: Client,
    conn: ConnectionManager,
}

struct Inner {
    source: Source,
    /// Replicas each script's writes must reach before its reply counts (`WAIT`; 0: none).
    wait_replicas: u32,
    config: ConnectionManagerConfig,
    current: RwLock<Current>,
}

/// A shared link to the Redis server the state lives on, following Sentinel failovers.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

impl Link {
    /// Connects to the server `client` names, for good.
    pub async fn fixed(client: Client, config: ConnectionManagerConfig) -> RedisResult<Link> {
        Link::open(Source::Fixed, client, config, 0).await
    }

    /// Connects to the primary that the Sentinels at `sentinels` (`host:port` each) name for
    /// `master`, using database `db`, and follows it through failovers. With `wait_replicas`,
    /// a script's reply is returned only once its writes reached that many replicas (`WAIT`),
    /// so what was acknowledged survives the primary's death.
    pub async fn sentinel(
        sentinels: &[String],
        master: &str,
        db: i64,
        wait_replicas: u32,
        config: ConnectionManagerConfig,
    ) -> RedisResult<Link> {
        let urls: Vec<String> = sentinels.iter().map(|s| format!("redis://{s}")).collect();
        let node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(redis::RedisConnectionInfo::default().set_db(db));
        let mut sentinel = Sentinel::build(urls)?;
        let client = ask_sentinel(&mut sentinel, master, &node).await?;
        let source = Source::Sentinel(Box::new(Watched {
            sentinel: tokio::sync::Mutex::new(sentinel),
            master: master.to_string(),
            node,
        }));
        Link::open(source, client, config, wait_replicas).await
    }

    async fn open(
        source: Source,
        client: Client,
        config: ConnectionManagerConfig,
        wait_replicas: u32,
    ) -> RedisResult<Link> {
        ensure_tls_provider();
        let conn = client
            .get_connection_manager_with_config(config.clone())
            .await?;
        let inner = Inner {
            source,
            wait_replicas,
            config,
            current: RwLock::new(Current { client, conn }),
        };
        Ok(Link {
            inner: Arc::new(inner),
        })
    }

    fn current(&self) -> Current {
        self.inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A client of the server commands go to now, for connections of their own (pub/sub,
    /// blocking reads).
    pub fn client(&self) -> Client {
        self.current().client
    }

    /// A connection to the server commands go to now, which moves the link to the new primary
    /// when a command fails after a failover.
    pub fn conn(&self) -> LinkConnection {
        LinkConnection {
            link: self.clone(),
            conn: self.current().conn,
        }
    }

    /// After a failed command: asks Sentinel which server is the primary, and moves there if
    /// it is another one. One question at a time; a failure that finds one under way leaves
    /// it to that one.
    async fn follow_failover(&self) {
        let Source::Sentinel(watched) = &self.inner.source else {
            return;
        };
        let Watched {
            sentinel,
            master,
            node,
        } = watched.as_ref();
        let Ok(mut sentinel) = sentinel.try_lock() else {
            return;
        };
        let moved = tokio::time::timeout(SENTINEL_TIMEOUT, async {
            let client = ask_sentinel(&mut sentinel, master, node).await?;
            if client.get_connection_info().addr() == self.client().get_connection_info().addr() {
                return Ok(None);
            }
            let conn = client
                .get_connection_manager_with_config(self.inner.config.clone())
                .await?;
            Ok::<_, redis::RedisError>(Some(Current { client, conn }))
        })
        .await;
        match moved {
            Ok(Ok(Some(current))) => {
                tracing::warn!(
                    master = master.as_str(),
                    primary = %current.client.get_connection_info().addr(),
                    "Sentinel names a new Redis primary; following it"
                );
                *self
                    .inner
                    .current
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = current;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::debug!("asking Sentinel for the primary of {master}: {e}"),
            Err(_) => tracing::debug!("Sentinel did not name the primary of {master} in time"),
        }
    }
}

/// rustls's process-wide crypto provider, which the redis crate's TLS (`rediss://`) and the
/// gRPC server's TLS use, cannot be picked by rustls itself when the build holds two (ring,
/// which tonic uses, and aws-lc, which the S3 and webhook clients bring): without one, the first
/// TLS connection panics. Installs ring's unless a provider is installed already; called before
/// any TLS is set up (the server at start, a Redis link when it connects).
pub(crate) fn ensure_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client of the primary the Sentinels name for `master` (checked to be a primary).
async fn ask_sentinel(
    sentinel: &mut Sentinel,
    master: &str,
    node: &SentinelNodeConnectionInfo,
) -> RedisResult<Client> {
    match tokio::time::timeout(
        SENTINEL_TIMEOUT,
        sentinel.async_master_for(master, Some(node)),
    )
    .await
    {
        Ok(reply) => reply,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no Sentinel answered in time",
        ))),
    }
}

/// One command's connection: the current server's connection manager, which tells its link
/// when a command fails.
pub struct LinkConnection {
    link: Link,
    conn: ConnectionManager,
}

impl LinkConnection {
    async fn checked<T>(link: &Link, result: RedisResult<T>) -> RedisResult<T> {
        if result.is_err() {
            link.follow_failover().await;
        }
        result
    }

    /// After a script: waits until its writes (and every earlier one on this connection)
    /// reached the replicas the link asks for, failing when they did not within
    /// [`WAIT_TIMEOUT_MS`]; the write stays on the primary, and the caller's retry finds it
    /// done (the scripts answer a repeated transition as a duplicate).
    async fn replicated(&mut self, cmd: &Cmd) -> RedisResult<()> {
        let wanted = self.link.inner.wait_replicas;
        let script = matches!(
            cmd.args_iter().next(),
            Some(Arg::Simple(b"EVALSHA" | b"EVAL"))
        );
        if wanted == 0 || !script {
            return Ok(());
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(wanted).arg(WAIT_TIMEOUT_MS);
        let acked: u32 = wait.query_async(&mut self.conn).await?;
        if acked < wanted {
            let detail = format!("the write reached {acked} of {wanted} replica(s) in time");
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "not replicated",
                detail,
            )));
        }
        Ok(())
    }
}

impl ConnectionLike for LinkConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut result = self.conn.req_packed_command(cmd).await;
            if result.is_ok() {
                if let Err(e) = self.replicated(cmd).await {
                    result = Err(e);
                }
            }
            LinkConnection::checked(&self.link, result).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.conn.req_packed_commands(pipeline, offset, count).await;
            LinkConnection::checked(&self.link, result).await
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}
