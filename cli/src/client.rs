//! A connection to a Xene cluster that tries each given server in turn: a call that fails
//! because a server is down or has no leader is retried on the next one (DESIGN §5.3).

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// The servers and the token to use.
pub struct Cluster {
    servers: Vec<String>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    timeout: Duration,
}

impl Cluster {
    pub fn new(servers: Vec<String>, token: Option<String>, timeout: Duration) -> Result<Self> {
        if servers.is_empty() {
            return Err(anyhow!("no server given: pass --servers HOST:PORT[,HOST:PORT…] or set XENE_SERVERS"));
        }
        let token = token
            .map(|t| format!("Bearer {}", t.trim()).parse())
            .transpose()
            .map_err(|_| anyhow!("the token contains characters that cannot be sent; check --token or XENE_TOKEN"))?;
        Ok(Cluster { servers, token, timeout })
    }

    /// Wraps a message with the token and deadline.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("authorization", token.clone());
        }
        request.set_timeout(self.timeout);
        request
    }

    /// Like [`Cluster::request`] but without a deadline, for streams that last.
    pub fn stream_request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("authorization", token.clone());
        }
        request
    }

    fn channel(server: &str) -> Result<Channel> {
        let endpoint = Endpoint::from_shared(format!("http://{server}"))
            .with_context(|| format!("server address {server:?} is not HOST:PORT"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        Ok(endpoint.connect_lazy())
    }

    /// Runs `call` against each server until one answers with anything but "unavailable".
    /// For calls that may be repeated: reads, and writes that come out the same however often
    /// they are made (apply, cancel, set).
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        // `Cancelled` here is the transport's, never the user's: a connection that a dying
        // server accepted and then dropped ("operation was canceled").
        self.call_retrying(call, |code| {
            matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled)
        })
        .await
    }

    /// Like [`Cluster::call`], for a call that creates something anew each time (a run, a
    /// token): it goes to the next server only when the last one said it could not take it,
    /// never after an answer that did not come in time, which may have come after the work
    /// was done. `unsure` is said then: what may have happened and how to find out.
    pub async fn call_once<T, F, Fut>(&self, unsure: &str, call: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_retrying(call, |code| code == Code::Unavailable).await.map_err(|e| match e.downcast::<Unsure>() {
            Ok(Unsure(server, status)) => anyhow!("{server}: {:?}: {}; {unsure}", status.code(), status.message()),
            Err(e) => e,
        })
    }

    async fn call_retrying<T, F, Fut>(&self, mut call: F, retry: impl Fn(Code) -> bool) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut last = None;
        for round in 0..3 {
            for server in &self.servers {
                match call(Self::channel(server)?).await {
                    Ok(value) => return Ok(value),
                    Err(status) if retry(status.code()) => {
                        last = Some(format!("{server}: {}", status.message()));
                    }
                    Err(status)
                        if matches!(status.code(), Code::DeadlineExceeded | Code::Unknown | Code::Cancelled) =>
                    {
                        return Err(Unsure(server.clone(), status).into())
                    }
                    Err(status) => return Err(describe(server, status)),
                }
            }
            tokio::time::sleep(Duration::from_millis(200 * (round + 1))).await;
        }
        Err(anyhow!(
            "no server could answer (check --servers or XENE_SERVERS, and that the servers run): {}",
            last.unwrap_or_default()
        ))
    }
}

/// A call whose answer did not come in time or was garbled: its outcome is unknown.
#[derive(Debug)]
struct Unsure(String, Status);

impl std::fmt::Display for Unsure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {:?}: {}", self.0, self.1.code(), self.1.message())
    }
}

impl std::error::Error for Unsure {}

fn describe(server: &str, status: Status) -> anyhow::Error {
    let hint = match status.code() {
        Code::Unauthenticated => " (pass a valid --token or set XENE_TOKEN)",
        Code::PermissionDenied => " (this needs a token with more rights)",
        _ => "",
    };
    anyhow!("{server}: {:?}: {}{hint}", status.code(), status.message())
}
