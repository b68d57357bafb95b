//! Server addresses and TLS material as clients give them (DESIGN §11.2): the one parse of a
//! server's gRPC address, `HOST:PORT` for plain gRPC or `https://HOST:PORT` for TLS, and the
//! checks of PEM text read from `--tls-*` files. Agents, `xenectl` and the servers share
//! these rules and their messages; each hands in its own way of reading a file (this crate
//! does no I/O).

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A server's gRPC address: `HOST:PORT` (a name, an IPv4 address or a bracketed IPv6
/// address, and a port from 1 to 65535), spoken to in plain gRPC, or with `https://` before
/// it, over TLS. `http://` may be written for plain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddress {
    authority: String,
    tls: bool,
}

/// A server address that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{address:?} is not HOST:PORT or https://HOST:PORT: {why}")]
pub struct BadAddress {
    pub address: String,
    pub why: String,
}

impl ServerAddress {
    /// Parses `text`, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<ServerAddress, BadAddress> {
        let bad = |why: &str| BadAddress { address: text.to_string(), why: why.to_string() };
        let (tls, authority) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else if text.contains("://") {
            return Err(bad("the scheme may only be https:// (TLS) or http:// (plain, the default)"));
        } else {
            (false, text)
        };
        if authority.is_empty() {
            return Err(bad("it is empty"));
        }
        if authority.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("it holds a space or a control character"));
        }
        if authority.contains(['/', '@', '?', '#']) {
            return Err(bad("it holds a '/', '@', '?' or '#'"));
        }
        let Some((host, port)) = authority.rsplit_once(':') else { return Err(bad("the port is missing")) };
        if host.is_empty() {
            return Err(bad("the host is missing"));
        }
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(bad("write an IPv6 address in brackets, as [::1]:7400"));
        }
        match port.parse::<u16>() {
            Ok(port) if port > 0 => {}
            _ => return Err(bad("the port must be a number from 1 to 65535")),
        }
        Ok(ServerAddress { authority: authority.to_string(), tls })
    }

    /// The same host and port, over TLS or not.
    pub fn with_tls(self, tls: bool) -> ServerAddress {
        ServerAddress { tls, ..self }
    }

    /// `HOST:PORT`, without the scheme.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Whether it is spoken to over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The URI tonic connects to: `http://HOST:PORT` or `https://HOST:PORT`.
    pub fn uri(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tls {
            write!(f, "https://{}", self.authority)
        } else {
            f.write_str(&self.authority)
        }
    }
}

/// Refuses a list of addresses that mixes `https://` and plain ones (a cluster speaks one or
/// the other, and a token sent to the plain one would travel in the clear), and TLS files
/// beside plain addresses (a client given a CA or a certificate means to speak TLS). `flag`
/// names where the addresses came from.
pub fn check_tls_addresses(tls_given: bool, addresses: &[ServerAddress], flag: &str) -> Result<(), String> {
    let plain = addresses.iter().find(|a| !a.is_tls());
    match (plain, addresses.iter().find(|a| a.is_tls())) {
        (Some(plain), Some(tls)) => Err(format!(
            "{flag} mixes {tls} (TLS) and {plain} (plain); a cluster speaks one or the other: write every address with https:// or none"
        )),
        (Some(plain), None) if tls_given => Err(format!(
            "TLS files are given (--tls-ca, --tls-cert) but {flag} names {plain}, a plain address; write it as https://{}",
            plain.authority()
        )),
        _ => Ok(()),
    }
}

/// A TLS setting that cannot be used, named by the flag that gave it.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("{flag} {path}: {source}; check the path and that this user may read the file")]
    Read { flag: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{flag} {path}: {what}")]
    Pem { flag: &'static str, path: PathBuf, what: String },
    #[error("{0}")]
    Settings(String),
}

/// Reads the file `flag` names with `read` and checks it with `check` (one of the two
/// below); returns its text.
pub fn read_pem(
    flag: &'static str,
    path: &Path,
    read: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    check: fn(&[u8]) -> Result<(), String>,
) -> Result<Vec<u8>, TlsFileError> {
    let pem = read(path).map_err(|source| TlsFileError::Read { flag, path: path.to_path_buf(), source })?;
    check(&pem).map_err(|what| TlsFileError::Pem { flag, path: path.to_path_buf(), what })?;
    Ok(pem)
}

/// A client's TLS material (agents, `xenectl`): the CA certificates that signed the servers'
/// certificates (the system's roots when absent) and a certificate and key to present to
/// servers that require one.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientTlsPem {
    pub ca: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for ClientTlsPem {
    /// Never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTlsPem")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl ClientTlsPem {
    /// Reads `--tls-ca`, `--tls-cert` and `--tls-key` with `read` and checks them, and
    /// refuses them beside a plain address of `servers` (`flag` names where those came
    /// from). `None` when no file is given.
    pub fn read(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        servers: &[ServerAddress],
        flag: &str,
        read: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Result<Option<ClientTlsPem>, TlsFileError> {
        check_pair(cert.is_some(), key.is_some(), "--tls-cert", "--tls-key").map_err(TlsFileError::Settings)?;
        check_tls_addresses(ca.is_some() || cert.is_some(), servers, flag).map_err(TlsFileError::Settings)?;
        if ca.is_none() && cert.is_none() {
            return Ok(None);
        }
        let ca = ca.map(|path| read_pem("--tls-ca", path, read, check_certificates_pem)).transpose()?;
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((
                read_pem("--tls-cert", cert, read, check_certificates_pem)?,
                read_pem("--tls-key", key, read, check_private_key_pem)?,
            )),
            _ => None,
        };
        Ok(Some(ClientTlsPem { ca, identity }))
    }
}

/// `text` followed by the messages of `source` and the errors behind it, each once: a failed
/// connection's error says only "transport error", and the TLS alert that caused it is in its
/// sources. Agents, `xenectl` and the servers say why a connection failed with it.
pub fn with_causes(mut text: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// Checks PEM text meant to hold one or more certificates (a chain, or CA certificates):
/// at least one, and none malformed. The error says what is wrong and what to give.
pub fn check_certificates_pem(pem: &[u8]) -> Result<(), String> {
    let mut count = 0;
    for certificate in CertificateDer::pem_slice_iter(pem) {
        certificate.map_err(|e| format!("a certificate in it cannot be read ({e})"))?;
        count += 1;
    }
    if count == 0 {
        return Err("it holds no certificate; give a PEM file with -----BEGIN CERTIFICATE----- blocks".into());
    }
    Ok(())
}

/// Checks PEM text meant to hold a private key (PKCS#8, PKCS#1 or SEC1).
pub fn check_private_key_pem(pem: &[u8]) -> Result<(), String> {
    PrivateKeyDer::from_pem_slice(pem).map(|_| ()).map_err(|e| {
        format!("no private key can be read from it ({e}); give the key in PEM, as -----BEGIN PRIVATE KEY-----")
    })
}

/// Checks that a certificate and its key are given together or not at all; `cert_flag` and
/// `key_flag` name them.
pub fn check_pair(cert: bool, key: bool, cert_flag: &str, key_flag: &str) -> Result<(), String> {
    match (cert, key) {
        (true, false) => Err(format!("{cert_flag} is given without {key_flag}: give both, or neither")),
        (false, true) => Err(format!("{key_flag} is given without {cert_flag}: give both, or neither")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port_with_an_optional_scheme() {
        for (good, tls, authority) in [
            ("127.0.0.1:7400", false, "127.0.0.1:7400"),
            ("xene-1.internal:7400", false, "xene-1.internal:7400"),
            ("[::1]:7400", false, "[::1]:7400"),
            ("localhost:1", false, "localhost:1"),
            ("http://a:7400", false, "a:7400"),
            ("https://a:7400", true, "a:7400"),
        ] {
            let address = ServerAddress::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!((address.is_tls(), address.authority()), (tls, authority), "{good}");
        }
        let tls = ServerAddress::parse("https://a:1").expect("address");
        assert_eq!((tls.to_string(), tls.uri()), ("https://a:1".to_string(), "https://a:1".to_string()));
        let plain = ServerAddress::parse("http://a:1").expect("address");
        assert_eq!((plain.to_string(), plain.uri()), ("a:1".to_string(), "http://a:1".to_string()));
        for (bad, why) in [
            ("", "empty"),
            ("https://", "empty"),
            (" 127.0.0.1:7400", "space"),
            ("127.0.0.1", "port is missing"),
            ("127.0.0.1:", "port must be"),
            ("127.0.0.1:0", "port must be"),
            ("127.0.0.1:70000", "port must be"),
            (":7400", "host is missing"),
            ("grpc://a:7400", "scheme may only be"),
            ("a:7400/x", "'/'"),
            ("https://a:7400/", "'/'"),
            ("::1:7400", "brackets"),
        ] {
            let message = ServerAddress::parse(bad).map(|_| ()).expect_err(bad).to_string();
            assert!(message.contains(why), "{bad:?}: {message}");
        }
    }

    #[test]
    fn tls_files_beside_a_plain_address_are_refused() {
        let addresses = ["https://a:1", "b:2"].map(|a| ServerAddress::parse(a).expect("address"));
        let message = check_tls_addresses(true, &addresses, "--servers").expect_err("mixed addresses");
        assert!(message.contains("--servers mixes https://a:1 (TLS) and b:2 (plain)"), "{message}");
        assert!(check_tls_addresses(true, &addresses[..1], "--servers").is_ok());
        let message = check_tls_addresses(false, &addresses, "--servers").expect_err("mixed, no TLS files");
        assert!(message.contains("mixes"), "{message}");
        let plain = [ServerAddress::parse("b:2").expect("address")];
        let message = check_tls_addresses(true, &plain, "--servers").expect_err("TLS files, plain address");
        assert!(message.contains("--servers names b:2, a plain address; write it as https://b:2"), "{message}");
        assert!(check_tls_addresses(false, &plain, "--servers").is_ok(), "no TLS given: plain is fine");
    }

    #[test]
    fn client_tls_files_are_read_checked_and_refused_beside_a_plain_server() {
        let ca_pem = b"-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n".to_vec();
        let key_pem = b"-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n".to_vec();
        let files = |path: &Path| match path.to_str() {
            Some("ca.pem" | "cert.pem") => Ok(ca_pem.clone()),
            Some("key.pem") => Ok(key_pem.clone()),
            Some("empty.pem") => Ok(Vec::new()),
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        };
        let tls = [ServerAddress::parse("https://a:1").expect("address")];
        let plain = [ServerAddress::parse("a:1").expect("address")];
        let read = |ca: Option<&str>, cert: Option<&str>, key: Option<&str>, servers: &[ServerAddress]| {
            ClientTlsPem::read(ca.map(Path::new), cert.map(Path::new), key.map(Path::new), servers, "--servers", &files)
        };

        assert_eq!(read(None, None, None, &plain).expect("no TLS"), None);
        let mixed = [tls[0].clone(), plain[0].clone()];
        let full = read(Some("ca.pem"), Some("cert.pem"), Some("key.pem"), &tls).expect("all three");
        let shown = format!("{full:?}");
        assert_eq!(shown, "Some(ClientTlsPem { ca: true, identity: true })", "no key in Debug");
        assert_eq!(
            full,
            Some(ClientTlsPem { ca: Some(ca_pem.clone()), identity: Some((ca_pem.clone(), key_pem.clone())) })
        );
        for (ca, cert, key, servers, want) in [
            (Some("ca.pem"), None, None, &plain[..], "--servers names a:1, a plain address; write it as https://a:1"),
            (None, None, None, &mixed[..], "--servers mixes https://a:1 (TLS) and a:1 (plain)"),
            (Some("missing.pem"), None, None, &tls[..], "--tls-ca missing.pem: entity not found; check the path"),
            (Some("empty.pem"), None, None, &tls[..], "--tls-ca empty.pem: it holds no certificate"),
            (None, Some("cert.pem"), None, &tls[..], "--tls-cert is given without --tls-key"),
            (None, Some("cert.pem"), Some("ca.pem"), &tls[..], "--tls-key ca.pem: no private key"),
        ] {
            let message = read(ca, cert, key, servers).expect_err(want).to_string();
            assert!(message.contains(want), "want {want:?} in {message}");
        }
    }

    #[test]
    fn an_error_is_told_with_its_causes_once_each() {
        #[derive(Debug)]
        struct Layer(&'static str, Option<Box<Layer>>);
        impl fmt::Display for Layer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Layer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|l| l as _)
            }
        }
        let error = Layer("transport error", Some(Box::new(Layer("received fatal alert: UnknownCA", None))));
        assert_eq!(
            with_causes("call failed".into(), Some(&error)),
            "call failed: transport error: received fatal alert: UnknownCA"
        );
        assert_eq!(
            with_causes("transport error".into(), Some(&error)),
            "transport error: received fatal alert: UnknownCA"
        );
    }

    #[test]
    fn pem_text_is_checked() {
        let message = check_certificates_pem(b"hello\n").expect_err("no certificate");
        assert!(message.contains("no certificate"), "{message}");
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        let message = check_certificates_pem(broken).expect_err("malformed");
        assert!(message.contains("cannot be read"), "{message}");
        let encoded = b"-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n";
        assert_eq!(check_certificates_pem(encoded), Ok(()), "the PEM layer only: rustls reads the certificate");
        let message = check_private_key_pem(encoded).expect_err("a certificate is no key");
        assert!(message.contains("no private key"), "{message}");
        let key = b"-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n";
        assert_eq!(check_private_key_pem(key), Ok(()));
        assert!(check_pair(true, false, "--tls-cert", "--tls-key").is_err_and(|m| m.contains("without --tls-key")));
        assert!(check_pair(false, true, "--tls-cert", "--tls-key").is_err_and(|m| m.contains("without --tls-cert")));
        assert!(check_pair(true, true, "--tls-cert", "--tls-key").is_ok());
    }
}
