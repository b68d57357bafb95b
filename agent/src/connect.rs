//! Channels to servers, and the one check of what a server address may be.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// A server address that is not `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{address:?} is not HOST:PORT: {why}")]
pub struct BadAddress {
    pub address: String,
    pub why: String,
}

/// The endpoint of `server` (`HOST:PORT`: a name, an IPv4 address or a bracketed IPv6
/// address, and a port from 1 to 65535), or why it is not one.
pub fn endpoint(server: &str) -> Result<Endpoint, BadAddress> {
    let bad = |why: &str| BadAddress { address: server.to_string(), why: why.to_string() };
    if server.is_empty() {
        return Err(bad("it is empty"));
    }
    if server.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it holds a space or a control character"));
    }
    if server.contains("://") {
        return Err(bad("leave out the scheme (http://)"));
    }
    if server.contains(['/', '@', '?', '#']) {
        return Err(bad("it holds a '/', '@', '?' or '#'"));
    }
    let Some((host, port)) = server.rsplit_once(':') else { return Err(bad("the port is missing")) };
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
    Endpoint::from_shared(format!("http://{server}")).map_err(|e| bad(&e.to_string()))
}

/// A lazily connecting channel to `server` (HOST:PORT).
pub fn channel(server: &str) -> Result<Channel, BadAddress> {
    Ok(endpoint(server)?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_host_and_port_make_an_address() {
        for good in ["127.0.0.1:7400", "xene-1.internal:7400", "[::1]:7400", "localhost:1"] {
            assert!(endpoint(good).is_ok(), "{good}: {:?}", endpoint(good).err());
        }
        for (bad, why) in [
            ("", "empty"),
            (" 127.0.0.1:7400", "space"),
            ("127.0.0.1", "port is missing"),
            ("127.0.0.1:", "port must be"),
            ("127.0.0.1:0", "port must be"),
            ("127.0.0.1:70000", "port must be"),
            (":7400", "host is missing"),
            ("http://a:7400", "scheme"),
            ("a:7400/x", "'/'"),
            ("::1:7400", "brackets"),
        ] {
            let message = endpoint(bad).map(|_| ()).expect_err(bad).to_string();
            assert!(message.contains(why), "{bad:?}: {message}");
        }
    }
}
