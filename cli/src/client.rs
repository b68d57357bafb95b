//! A connection to a Xene cluster that tries each given server in turn: a call that fails
//! because a server is down or has no leader is retried on the next one (DESIGN §5.3).

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};
use xene_model::address::{with_causes, ServerAddress};

use crate::config::Settings;

/// The servers, the token and the TLS settings to use.
pub struct Cluster {
    servers: Vec<ServerAddress>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// For `https://` servers: the CA given (the system's roots when `None`) and a client
    /// certificate.
    tls: ClientTlsConfig,
    /// Whether a client certificate is given (for the hints of TLS failures).
    has_identity: bool,
    timeout: Duration,
}

impl Cluster {
    pub fn new(settings: Settings, timeout: Duration) -> Result<Self> {
        let Settings { servers, token, tls } = settings;
        if servers.is_empty() {
            return Err(anyhow!("no server given: pass --servers HOST:PORT[,HOST:PORT…] or set XENE_SERVERS"));
        }
        let token = token.map(|t| format!("Bearer {}", t.trim()).parse()).transpose().map_err(|_| {
            anyhow!("the token contains characters that cannot be sent; check --token, XENE_TOKEN or the config file")
        })?;
        let tls = tls.unwrap_or_default();
        let config = match tls.ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        let has_identity = tls.identity.is_some();
        let tls = match tls.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        };
        Ok(Cluster { servers, token, tls, has_identity, timeout })
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

    fn channel(&self, server: &ServerAddress) -> Result<Channel> {
        let mut endpoint =
            Endpoint::from_shared(server.uri()).with_context(|| format!("server address {server} is not usable"))?;
        if server.is_tls() {
            endpoint = endpoint.tls_config(self.tls.clone()).with_context(|| format!("TLS settings for {server}"))?;
        }
        Ok(endpoint.connect_timeout(Duration::from_secs(2)).tcp_nodelay(true).connect_lazy())
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
                match call(self.channel(server)?).await {
                    Ok(value) => return Ok(value),
                    Err(status) if retry(status.code()) => {
                        // A TLS alert says more than the closed connection a later try may see.
                        let message = format!("{server}: {}", self.explain(server, &status));
                        if last.as_ref().is_none_or(|l: &String| !l.contains("alert:") || message.contains("alert:")) {
                            last = Some(message);
                        }
                    }
                    Err(status)
                        if matches!(status.code(), Code::DeadlineExceeded | Code::Unknown | Code::Cancelled) =>
                    {
                        return Err(Unsure(server.to_string(), status).into())
                    }
                    Err(status) => return Err(self.describe(server, status)),
                }
            }
            tokio::time::sleep(Duration::from_millis(200 * (round + 1))).await;
        }
        Err(anyhow!(
            "no server could answer (check --servers or XENE_SERVERS, and that the servers run): {}",
            last.unwrap_or_default()
        ))
    }

    fn describe(&self, server: &ServerAddress, status: Status) -> anyhow::Error {
        let hint = match status.code() {
            Code::Unauthenticated => " (pass a valid --token or set XENE_TOKEN)",
            Code::PermissionDenied => " (this needs a token with more rights)",
            _ => "",
        };
        anyhow!("{server}: {:?}: {}{hint}", status.code(), self.explain(server, &status))
    }

    /// The message of `status` with the errors behind it (a failed connection says only
    /// "transport error"; the TLS alert that caused it is in its sources), and what to do when
    /// TLS is the likely trouble.
    fn explain(&self, server: &ServerAddress, status: &Status) -> String {
        let text = with_causes(status.message().to_string(), std::error::Error::source(status));
        // Error texts differ in case ("Connection reset by peer" from the OS, "broken pipe" from h2).
        let lower = text.to_lowercase();
        let hint = if !server.is_tls() && text.contains("h2 protocol error") {
            " (a server that serves TLS answers plain gRPC so: write it as https://HOST:PORT)"
        } else if !server.is_tls()
            && ["connection closed", "broken pipe", "connection reset"].iter().any(|closed| lower.contains(closed))
        {
            // Which of these a plain client sees depends on timing: the server may close the
            // connection before, while or after the client writes its request.
            " (a server that serves TLS may close a plain gRPC connection so: if it does, write it as https://HOST:PORT)"
        } else if server.is_tls() && text.contains("CertificateRequired") {
            " (the server requires a client certificate: pass --tls-cert and --tls-key)"
        } else if server.is_tls() && (text.contains("UnknownCA") || text.contains("BadCertificate")) {
            " (the server refused this client certificate: it must be signed by the servers' --tls-client-ca)"
        } else if server.is_tls() && text.contains("UnknownIssuer") {
            " (the server's certificate is not signed by a CA this client trusts: pass the servers' CA with --tls-ca)"
        } else if server.is_tls() && text.contains("NotValidForName") {
            " (the server's certificate does not name the host in this address)"
        } else if server.is_tls()
            && ["connection closed", "operation was canceled", "broken pipe", "connection reset"]
                .iter()
                .any(|closed| lower.contains(closed))
        {
            // With TLS 1.3 the server's alert may come after the client sent its request; then
            // only a closed connection is seen.
            if self.has_identity {
                " (closed at or after the TLS handshake: if the servers require client certificates, check that --tls-cert is signed by the servers' --tls-client-ca)"
            } else {
                " (closed at or after the TLS handshake: if the servers require client certificates, pass --tls-cert and --tls-key)"
            }
        } else {
            ""
        };
        text + hint
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
