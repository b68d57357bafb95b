//! Certificates for the TLS tests, made at run time with rcgen (no file is checked in, none
//! expires between runs): a CA, a certificate for every server (loopback names; server and
//! client use, since a server presents it to its peers too), a client certificate, and a
//! second CA with a client certificate of its own, which the servers must refuse.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files of a test PKI, in one directory.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA that signed `server` and `client`.
    pub ca: PathBuf,
    /// For every server: names `localhost` and `127.0.0.1`; server and client use.
    pub server: CertFiles,
    /// For agents and xenectl: client use.
    pub client: CertFiles,
    /// Another CA, trusted by nobody.
    pub other_ca: PathBuf,
    /// A client certificate signed by `other_ca`.
    pub stranger: CertFiles,
}

impl TestPki {
    /// Makes the files in `dir`.
    pub fn generate(dir: &Path) -> TestPki {
        std::fs::create_dir_all(dir).expect("create the PKI directory");
        let ca = new_ca("xene test CA");
        let other = new_ca("another CA");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write a PEM file");
            path
        };
        let issue = |issuer: &CertifiedIssuer<'static, KeyPair>, name: &str, names: &[&str], server: bool| {
            let key = KeyPair::generate().expect("generate a key");
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = if server {
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
            } else {
                vec![ExtendedKeyUsagePurpose::ClientAuth]
            };
            let cert = params.signed_by(&key, issuer).expect("sign a certificate");
            CertFiles {
                cert: write(&format!("{name}.pem"), &cert.pem()),
                key: write(&format!("{name}-key.pem"), &key.serialize_pem()),
            }
        };
        TestPki {
            ca: write("ca.pem", &ca.pem()),
            server: issue(&ca, "server", &["localhost", "127.0.0.1"], true),
            client: issue(&ca, "client", &[], false),
            other_ca: write("other-ca.pem", &other.pem()),
            stranger: issue(&other, "stranger", &[], false),
        }
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("generate a key")).expect("self-sign the CA")
}
