//! Channels to servers.

use std::time::Duration;

use anyhow::{Context, Result};
use tonic::transport::{Channel, Endpoint};

/// A lazily connecting channel to `server` (HOST:PORT).
pub fn channel(server: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{server}"))
        .with_context(|| format!("server address {server:?} is not HOST:PORT"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}
