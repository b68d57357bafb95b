//! A TCP proxy on one directed link, whose traffic the test controls (DESIGN §14: "a
//! controllable TCP proxy on each link (drop, delay, blackhole)").
//!
//! A [`Proxy`] listens on a loopback port and forwards every connection to one target. The
//! test sets, at any time and for connections old and new:
//! - each direction on its own ([`Direction::Forward`] carries what the connecting side sends,
//!   [`Direction::Backward`] the answers): [`Flow::Pass`], [`Flow::Delay`] (every chunk is
//!   delivered that much later, in order) or [`Flow::Blackhole`] (nothing is read or
//!   delivered; the bytes wait, as TCP would keep retransmitting them, and flow again once
//!   the direction passes);
//! - the link as a whole: [`Proxy::drop_connections`] closes every open connection and closes
//!   each new one at once, until [`Proxy::heal`] or [`Proxy::set_open`].
//!
//! Everything is bounded: at most [`Proxy::MAX_CONNECTIONS`] connections, and per direction
//! at most [`Proxy::QUEUED_CHUNKS`] chunks of [`Proxy::CHUNK`] bytes in flight. Every task
//! belongs to the proxy's accept task, which owns its connections in a `JoinSet`; dropping
//! the [`Proxy`] aborts the accept task, and dropping its `JoinSet` aborts every connection.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// One direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the side that connected to the proxy towards the target (requests).
    Forward,
    /// From the target back to the connecting side (responses).
    Backward,
}

/// What happens to the bytes travelling in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Flow {
    #[default]
    Pass,
    /// Each chunk is delivered this long after it was read.
    Delay(Duration),
    /// Nothing is read or delivered until the flow changes; nothing is lost either.
    Blackhole,
}

/// The settings of one link, shared with every connection through a `watch` channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LinkConfig {
    forward: Flow,
    backward: Flow,
    /// When false, open connections are closed and new ones closed at once.
    open: bool,
}

impl LinkConfig {
    const HEALTHY: LinkConfig = LinkConfig { forward: Flow::Pass, backward: Flow::Pass, open: true };

    fn flow(&self, direction: Direction) -> Flow {
        match direction {
            Direction::Forward => self.forward,
            Direction::Backward => self.backward,
        }
    }
}

/// A fault-injecting TCP proxy in front of one target address. Stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    config: watch::Sender<LinkConfig>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// The most connections one proxy carries at once; more are closed on arrival.
    pub const MAX_CONNECTIONS: usize = 256;
    /// Bytes read at once from one side.
    pub const CHUNK: usize = 16 * 1024;
    /// Chunks read but not yet delivered, per direction of a connection.
    pub const QUEUED_CHUNKS: usize = 64;

    /// Listens on a free loopback port and forwards every connection to `target`. Must be
    /// called inside a tokio runtime, which runs the proxy's tasks.
    pub async fn start(target: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (config, _) = watch::channel(LinkConfig::HEALTHY);
        let accept = tokio::spawn(accept_loop(listener, target, config.subscribe()));
        Ok(Proxy { addr, target, config, accept })
    }

    /// Where to connect to go through this proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where this proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Sets how one direction flows, for open and future connections.
    pub fn set_flow(&self, direction: Direction, flow: Flow) {
        self.config.send_modify(|config| match direction {
            Direction::Forward => config.forward = flow,
            Direction::Backward => config.backward = flow,
        });
    }

    /// Sets both directions at once.
    pub fn set_flows(&self, flow: Flow) {
        self.config.send_modify(|config| {
            config.forward = flow;
            config.backward = flow;
        });
    }

    /// Closes (or, with `true`, stops closing) connections: while closed, every open
    /// connection is dropped and each new one is closed as soon as it is accepted.
    pub fn set_open(&self, open: bool) {
        self.config.send_modify(|config| config.open = open);
    }

    /// Closes every connection and refuses new ones until [`Proxy::heal`].
    pub fn drop_connections(&self) {
        self.set_open(false);
    }

    /// Back to a healthy link: open, and both directions passing.
    pub fn heal(&self) {
        self.config.send_replace(LinkConfig::HEALTHY);
    }

    /// Whether the link is healthy (open and passing both ways).
    pub fn is_healthy(&self) -> bool {
        *self.config.borrow() == LinkConfig::HEALTHY
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The accept task owns every connection task; aborting it drops its JoinSet, which
        // aborts them too, and their sockets close.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, config: watch::Receiver<LinkConfig>) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            // Reap finished connections so the set stays bounded by the live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else {
            // Out of file descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if !config.borrow().open || connections.len() >= Proxy::MAX_CONNECTIONS {
            drop(client);
            continue;
        }
        connections.spawn(connection(client, target, config.clone()));
    }
}

/// Carries one connection until both directions end, either side fails, or the link closes.
async fn connection(client: TcpStream, target: SocketAddr, mut config: watch::Receiver<LinkConfig>) {
    let server = tokio::select! {
        server = TcpStream::connect(target) => server,
        _ = closed(&mut config) => return,
    };
    let Ok(server) = server else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let forward = pump(client_read, server_write, Direction::Forward, config.clone());
    let backward = pump(server_read, client_write, Direction::Backward, config.clone());
    tokio::select! {
        _ = async { tokio::try_join!(forward, backward) } => {}
        _ = closed(&mut config) => {}
    }
}

/// Resolves once the link is closed (or the proxy is gone).
async fn closed(config: &mut watch::Receiver<LinkConfig>) {
    let _ = config.wait_for(|c| !c.open).await;
}

/// Waits until `direction` is not blackholed and returns its flow; `None` if the proxy is gone.
async fn unblocked(config: &mut watch::Receiver<LinkConfig>, direction: Direction) -> Option<Flow> {
    config.wait_for(|c| c.flow(direction) != Flow::Blackhole).await.ok().map(|c| c.flow(direction))
}

/// Moves bytes one way: a reader stamps each chunk with its delivery time, a writer delivers
/// it then. Both wait while the direction is blackholed. An end of stream is passed on as a
/// half-close; an error ends the connection.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    direction: Direction,
    config: watch::Receiver<LinkConfig>,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(Proxy::QUEUED_CHUNKS);
    let mut reader_config = config.clone();
    let reader = async move {
        let mut buf = vec![0u8; Proxy::CHUNK];
        loop {
            unblocked(&mut reader_config, direction).await.ok_or_else(gone)?;
            let n = tokio::select! {
                n = from.read(&mut buf) => n?,
                // The flow changed (to a blackhole, say) while waiting for bytes: look again.
                changed = reader_config.changed() => { changed.map_err(|_| gone())?; continue }
            };
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
            // The flow current when the bytes arrive decides their delay.
            let delay = match reader_config.borrow().flow(direction) {
                Flow::Delay(delay) => delay,
                _ => Duration::ZERO,
            };
            tx.send((Instant::now() + delay, buf[..n].to_vec())).await.map_err(|_| gone())?;
        }
    };
    let mut writer_config = config;
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            unblocked(&mut writer_config, direction).await.ok_or_else(gone)?;
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the proxy stopped")
}
