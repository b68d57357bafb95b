//! Where `xenectl` finds its cluster (DESIGN §12): flags first, then `XENE_*` variables (both
//! read by clap), then a config file, then the default server `127.0.0.1:7400`.
//!
//! The file is `--config`, or `$XENECTL_CONFIG`, or `$XDG_CONFIG_HOME/xene/config.yaml`
//! (`~/.config/xene/config.yaml`). A missing default file is no error; a named one that is
//! missing, a malformed one or an unknown key is. Relative paths in it are read from the
//! file's own directory, as kubectl reads a kubeconfig.
//!
//! ```yaml
//! servers: [xene-1:7400, xene-2:7400, xene-3:7400]   # or https://HOST:PORT for TLS
//! token: xt_...
//! tls_ca: ca.pem          # the CA that signed the servers' certificates
//! tls_cert: me.pem        # for servers that require client certificates
//! tls_key: me-key.pem
//! ```

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::Deserialize;
use xene_model::address::{ClientTlsPem, ServerAddress};

/// The server used when none is given anywhere.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7400";

/// The config file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub servers: Option<Vec<String>>,
    pub token: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// What the flags and variables gave (each `None` when not given).
#[derive(Debug, Default)]
pub struct Given {
    pub config: Option<PathBuf>,
    pub servers: Option<Vec<String>>,
    pub token: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// The settings resolved: flags over variables over the file over defaults, checked.
#[derive(Debug)]
pub struct Settings {
    pub servers: Vec<ServerAddress>,
    pub token: Option<String>,
    pub tls: Option<ClientTlsPem>,
}

/// The default config file: `$XDG_CONFIG_HOME/xene/config.yaml`, else
/// `$HOME/.config/xene/config.yaml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|home| PathBuf::from(home).join(".config"))
    })?;
    Some(base.join("xene").join("config.yaml"))
}

/// Reads the config file: the one named (which must exist), else the default one if it
/// exists. Returns it with the directory its relative paths are read from.
fn read_file(named: Option<&Path>) -> Result<(FileConfig, PathBuf)> {
    let (path, must_exist) = match named {
        Some(path) => (path.to_path_buf(), true),
        None => match default_path() {
            Some(path) => (path, false),
            None => return Ok((FileConfig::default(), PathBuf::from("."))),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
            return Ok((FileConfig::default(), PathBuf::from(".")));
        }
        Err(e) => {
            let from = if must_exist {
                "named by --config or XENECTL_CONFIG"
            } else {
                "the default; name another with --config, or XENECTL_CONFIG=/dev/null for none"
            };
            return Err(anyhow!("reading the config file {} ({from}): {e}", path.display()));
        }
    };
    let file = parse_file(&text).with_context(|| format!("the config file {}", path.display()))?;
    let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    Ok((file, dir))
}

fn parse_file(text: &str) -> Result<FileConfig> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    yaml_serde::from_str(text)
        .map_err(|e| anyhow!("{e}; the keys are servers (a list of HOST:PORT), token, tls_ca, tls_cert and tls_key"))
}

/// Resolves `given` over the config file.
pub fn resolve(given: Given) -> Result<Settings> {
    let (file, dir) = read_file(given.config.as_deref())?;
    let relative = |path: PathBuf| if path.is_relative() { dir.join(path) } else { path };
    let (servers, from) = match (given.servers, file.servers) {
        (Some(servers), _) => (servers, "--servers (or XENE_SERVERS)"),
        (None, Some(servers)) => (servers, "servers in the config file"),
        (None, None) => (vec![DEFAULT_SERVER.to_string()], "the default server"),
    };
    let servers = servers
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| ServerAddress::parse(s).map_err(|e| anyhow!("{from}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    if servers.is_empty() {
        return Err(anyhow!("{from} names no server: give HOST:PORT[,HOST:PORT…]"));
    }
    let tls_ca = given.tls_ca.or(file.tls_ca.map(relative));
    let tls_cert = given.tls_cert.or(file.tls_cert.map(relative));
    let tls_key = given.tls_key.or(file.tls_key.map(relative));
    let tls =
        ClientTlsPem::read(tls_ca.as_deref(), tls_cert.as_deref(), tls_key.as_deref(), &servers, from, &|path| {
            std::fs::read(path)
        })?;
    Ok(Settings { servers, token: given.token.or(file.token), tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n";
        write(dir.path(), "ca.pem", ca);
        let file =
            write(dir.path(), "config.yaml", "servers: [https://a:1, https://b:2]\ntoken: from-file\ntls_ca: ca.pem\n");
        let settings = resolve(Given { config: Some(file.clone()), ..Given::default() }).expect("the file's settings");
        let servers: Vec<String> = settings.servers.iter().map(ToString::to_string).collect();
        assert_eq!(servers, ["https://a:1", "https://b:2"]);
        assert_eq!(settings.token.as_deref(), Some("from-file"));
        assert_eq!(settings.tls.and_then(|t| t.ca), Some(ca.as_bytes().to_vec()), "tls_ca read beside the file");

        let settings = resolve(Given {
            config: Some(file),
            servers: Some(vec!["https://c:3".into()]),
            token: Some("from-flag".into()),
            ..Given::default()
        })
        .expect("flags over the file");
        let servers: Vec<String> = settings.servers.iter().map(ToString::to_string).collect();
        assert_eq!((servers, settings.token.as_deref()), (vec!["https://c:3".to_string()], Some("from-flag")));

        let empty = write(dir.path(), "empty.yaml", "");
        let settings = resolve(Given { config: Some(empty), ..Given::default() }).expect("an empty file");
        let servers: Vec<String> = settings.servers.iter().map(ToString::to_string).collect();
        assert_eq!((servers, settings.token, settings.tls), (vec![DEFAULT_SERVER.to_string()], None, None));
    }

    #[test]
    fn a_bad_file_is_refused_saying_which_and_why() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text, want) in [
            ("unknown.yaml", "servers: [a:1]\nserver: b:2\n", "unknown.yaml: unknown field `server`"),
            ("scalar.yaml", "servers: a:1\n", "scalar.yaml: servers: invalid type"),
            ("address.yaml", "servers: [\"a\"]\n", "servers in the config file: \"a\" is not HOST:PORT"),
            ("tls.yaml", "servers: [https://a:1]\ntls_ca: /nonexistent.pem\n", "--tls-ca /nonexistent.pem"),
        ] {
            let path = write(dir.path(), name, text);
            let message = format!("{:#}", resolve(Given { config: Some(path), ..Given::default() }).expect_err(name));
            assert!(message.contains(want), "{name}: want {want:?} in {message}");
        }
        let missing = dir.path().join("missing.yaml");
        let message =
            format!("{:#}", resolve(Given { config: Some(missing), ..Given::default() }).expect_err("missing"));
        assert!(message.contains("missing.yaml (named by --config or XENECTL_CONFIG)"), "{message}");
    }
}
