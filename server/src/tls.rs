//! A server's TLS (DESIGN §11.2): its certificate on both listeners, the CA its peers'
//! certificates are checked against when it connects to them, and whether gRPC clients
//! (agents, `xenectl`, other servers) must present a certificate signed by a given CA.
//!
//! One setting for the whole cluster: a server given a certificate speaks TLS on its own
//! listeners and expects it on its peers'. The REST listener never asks for a client
//! certificate, since webhook senders (GitHub, GitLab) have none.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use xene_model::address::{
    check_certificates_pem, check_pair, check_private_key_pem, read_pem, with_causes, TlsFileError,
};

/// The files given, by flag.
#[derive(Debug, Clone, Default)]
pub struct TlsPaths {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

/// The PEM text of a server's TLS files, read and checked at start-up.
#[derive(Clone)]
pub struct ServerTls {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ServerTls")
            .field("ca", &self.ca.is_some())
            .field("client_ca", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files `paths` names: `None` when TLS is off (no file given), an error when
    /// the set is incomplete or a file cannot be used.
    pub fn load(paths: &TlsPaths) -> Result<Option<ServerTls>, TlsFileError> {
        check_pair(paths.cert.is_some(), paths.key.is_some(), "--tls-cert", "--tls-key")
            .map_err(TlsFileError::Settings)?;
        let (Some(cert), Some(key)) = (&paths.cert, &paths.key) else {
            return match (&paths.ca, &paths.client_ca) {
                (None, None) => Ok(None),
                (Some(_), _) => Err(TlsFileError::Settings(
                    "--tls-ca is given without --tls-cert and --tls-key: a server speaks TLS to its peers only when it serves TLS itself; give all three".into(),
                )),
                (None, Some(_)) => Err(TlsFileError::Settings(
                    "--tls-client-ca is given without --tls-cert and --tls-key: client certificates are asked for only over TLS; give --tls-cert and --tls-key too".into(),
                )),
            };
        };
        let read = |path: &Path| std::fs::read(path);
        let certificates = |flag, path: &Path| read_pem(flag, path, &read, check_certificates_pem);
        let tls = ServerTls {
            cert: certificates("--tls-cert", cert)?,
            key: read_pem("--tls-key", key, &read, check_private_key_pem)?,
            ca: paths.ca.as_deref().map(|path| certificates("--tls-ca", path)).transpose()?,
            client_ca: paths.client_ca.as_deref().map(|path| certificates("--tls-client-ca", path)).transpose()?,
        };
        // Built now, before anything is opened or bound: a key that does not match its
        // certificate, or a certificate rustls cannot use, stops the server here.
        tonic::transport::Server::builder().tls_config(tls.grpc()).map_err(|e| {
            TlsFileError::Settings(format!(
                "--tls-cert {} with --tls-key {} (and --tls-client-ca): {}",
                cert.display(),
                key.display(),
                with_causes(e.to_string(), std::error::Error::source(&e))
            ))
        })?;
        tls.peer_endpoint("localhost:1").map_err(|e| {
            TlsFileError::Settings(format!(
                "the settings for reaching the other servers (--tls-ca, --tls-cert, --tls-key): {}",
                with_causes(e.to_string(), std::error::Error::source(&e))
            ))
        })?;
        Ok(Some(tls))
    }

    /// The gRPC listener's settings: this server's certificate, and client certificates
    /// required when `--tls-client-ca` is given.
    pub fn grpc(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key));
        match &self.client_ca {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }

    /// Whether gRPC clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca.is_some()
    }

    /// The REST listener's settings: this server's certificate, HTTP/2 or HTTP/1.1.
    pub async fn rest(&self) -> std::io::Result<axum_server::tls_rustls::RustlsConfig> {
        axum_server::tls_rustls::RustlsConfig::from_pem(self.cert.clone(), self.key.clone()).await
    }

    /// The endpoint of the peer at `authority` (`HOST:PORT`) over TLS: its certificate
    /// checked against `--tls-ca` (the system's roots when absent), and this server's own
    /// presented, for peers that require client certificates.
    pub fn peer_endpoint(&self, authority: &str) -> Result<Endpoint, tonic::transport::Error> {
        let config = ClientTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key));
        let config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        Endpoint::from_shared(format!("https://{authority}"))?.tls_config(config)
    }
}
