//! Channels to servers: plain gRPC to `HOST:PORT`, TLS to `https://HOST:PORT` (DESIGN §11.2)
//! with the CA and client certificate the agent was given. The address rules are the
//! model's ([`ServerAddress`]), shared with `xenectl` and the servers.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use xene_model::address::{with_causes, ClientTlsPem, ServerAddress};

/// How the agent speaks TLS to servers whose addresses say `https://`: the CA certificates
/// that signed their certificates (the system's roots when none is given) and the agent's own
/// certificate, for servers that require one.
#[derive(Clone, Default)]
pub struct ClientTls {
    ca: Option<Certificate>,
    identity: Option<Identity>,
}

impl std::fmt::Debug for ClientTls {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("ca", &self.ca.is_some()).field("identity", &self.identity.is_some()).finish()
    }
}

impl From<ClientTlsPem> for ClientTls {
    fn from(pem: ClientTlsPem) -> ClientTls {
        ClientTls {
            ca: pem.ca.map(Certificate::from_pem),
            identity: pem.identity.map(|(cert, key)| Identity::from_pem(cert, key)),
        }
    }
}

impl ClientTls {
    fn config(&self) -> ClientTlsConfig {
        let config = match &self.ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(ca.clone()),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        match &self.identity {
            Some(identity) => config.identity(identity.clone()),
            None => config,
        }
    }
}

/// The endpoint of `server`, over TLS when its address says so.
pub fn endpoint(server: &ServerAddress, tls: &ClientTls) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(server.uri())?;
    if server.is_tls() {
        endpoint.tls_config(tls.config())
    } else {
        Ok(endpoint)
    }
}

/// `error` with the errors behind it: tonic's own says only "transport error".
pub fn describe(error: &dyn std::error::Error) -> String {
    with_causes(error.to_string(), error.source())
}

/// A call's status message with the errors behind it (a failed connection's TLS alert).
pub fn describe_status(status: &tonic::Status) -> String {
    with_causes(status.message().to_string(), std::error::Error::source(status))
}

/// A lazily connecting channel to `server`.
pub fn channel(server: &ServerAddress, tls: &ClientTls) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(server, tls)?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}
