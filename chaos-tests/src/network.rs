//! A cluster's network made of [`Proxy`]s: one per directed peer link (server A reaching
//! server B has its own proxy, independent of B reaching A) and one in front of each server
//! for clients. Partitions, one-way cuts, delays and dropped connections are settings of
//! these proxies (DESIGN §14).
//!
//! Servers are sent through their peer links with the `XENE_TEST_PEER_ROUTES` test hook of
//! `xene-server` (`ADDR=VIA,...`: reach the peer advertised at `ADDR` through `VIA`); clients
//! connect to [`Network::client_addr`] instead of the server's own address. With
//! [`Network::plan_advertising_client_proxies`] servers also advertise their client proxy's
//! address, so clients that follow leader hints (agents) stay behind the proxies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::harness::ServerPlan;
use crate::proxy::{Direction, Flow, Proxy};

/// The name of the server's test hook that routes peer traffic through proxies.
pub const PEER_ROUTES_ENV: &str = "XENE_TEST_PEER_ROUTES";

/// The server's setting for the gRPC address it gives peers and clients.
pub const ADVERTISE_GRPC_ENV: &str = "XENE_ADVERTISE_GRPC_ADDR";

/// Which address a planned server advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Advertise {
    /// The address it listens on.
    OwnAddress,
    /// The address of its client proxy.
    ClientProxy,
}

/// How a cut link fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Nothing gets through in either direction; connections stay open and hang.
    Blackhole,
    /// Connections are closed and new ones closed at once.
    Drop,
    /// Requests get through; the answers are held until the link heals, so callers time out.
    AnswersBlocked,
}

/// Every proxy of one cluster. Servers are numbered by their index in
/// [`TestCluster::servers`](crate::harness::TestCluster).
pub struct Network {
    servers: usize,
    peers: BTreeMap<(usize, usize), Proxy>,
    clients: Vec<Proxy>,
    /// How clients speak to the servers through the proxies, when the cluster speaks TLS (the
    /// proxies carry its bytes unchanged).
    client_tls: Option<ClientTlsConfig>,
}

impl Network {
    /// Chooses addresses for `servers` servers, starts a proxy on every link, and returns the
    /// plans to start the servers with (see `TestCluster::start_planned`).
    pub async fn plan(servers: usize) -> std::io::Result<(Network, Vec<ServerPlan>)> {
        Self::plan_with(servers, Advertise::OwnAddress).await
    }

    /// Like [`Network::plan`], and each server advertises its client proxy's address as its
    /// gRPC address (`XENE_ADVERTISE_GRPC_ADDR`), so the leader hints a follower gives point at
    /// client proxies too: a client that follows them (an agent, `xenectl`) never leaves the
    /// proxies, and cutting a client link cuts it. Peer traffic still takes the per-link proxies.
    pub async fn plan_advertising_client_proxies(servers: usize) -> std::io::Result<(Network, Vec<ServerPlan>)> {
        Self::plan_with(servers, Advertise::ClientProxy).await
    }

    async fn plan_with(servers: usize, advertise: Advertise) -> std::io::Result<(Network, Vec<ServerPlan>)> {
        let mut plans: Vec<ServerPlan> = (0..servers).map(|_| ServerPlan::on_free_ports()).collect();
        let grpc: Vec<SocketAddr> = plans
            .iter()
            .map(|plan| plan.grpc.parse().expect("invariant: the harness picks IP:port addresses"))
            .collect();
        // A proxy's ephemeral port may be one the plans picked (they were bound and released);
        // such a proxy is dropped and started again elsewhere.
        let taken: Vec<String> = plans.iter().flat_map(|plan| [plan.grpc.clone(), plan.http.clone()]).collect();
        let start = |target: SocketAddr| {
            let taken = &taken;
            async move {
                loop {
                    let proxy = Proxy::start(target).await?;
                    if !taken.contains(&proxy.addr().to_string()) {
                        return Ok::<Proxy, std::io::Error>(proxy);
                    }
                }
            }
        };
        let mut peers = BTreeMap::new();
        for from in 0..servers {
            for to in (0..servers).filter(|to| *to != from) {
                peers.insert((from, to), start(grpc[to]).await?);
            }
        }
        let mut clients = Vec::with_capacity(servers);
        for addr in &grpc {
            clients.push(start(*addr).await?);
        }
        // The address each server is known by to its peers, which the peer routes are keyed on.
        let advertised: Vec<SocketAddr> = match advertise {
            Advertise::OwnAddress => grpc.clone(),
            Advertise::ClientProxy => clients.iter().map(Proxy::addr).collect(),
        };
        for (from, plan) in plans.iter_mut().enumerate() {
            let routes: Vec<String> = (0..servers)
                .filter(|to| *to != from)
                .map(|to| format!("{}={}", advertised[to], peers[&(from, to)].addr()))
                .collect();
            plan.env.push((PEER_ROUTES_ENV.to_string(), routes.join(",")));
            // The proxies point at these ports.
            plan.movable = false;
            if advertise == Advertise::ClientProxy {
                plan.env.push((ADVERTISE_GRPC_ENV.to_string(), advertised[from].to_string()));
            }
        }
        Ok((Network { servers, peers, clients, client_tls: None }, plans))
    }

    pub fn servers(&self) -> usize {
        self.servers
    }

    /// The proxy server `from` reaches server `to` through.
    pub fn link(&self, from: usize, to: usize) -> &Proxy {
        &self.peers[&(from, to)]
    }

    /// The proxy clients reach server `index` through.
    pub fn client_link(&self, index: usize) -> &Proxy {
        &self.clients[index]
    }

    /// The address clients use for server `index`.
    pub fn client_addr(&self, index: usize) -> SocketAddr {
        self.clients[index].addr()
    }

    /// Makes [`Network::client_channel`] speak TLS with `config` (a cluster started with
    /// `ClusterOptions::tls`; see `ClusterTls::client_config`).
    pub fn use_client_tls(&mut self, config: ClientTlsConfig) {
        self.client_tls = Some(config);
    }

    /// A lazily connecting channel to server `index` through its client proxy.
    pub fn client_channel(&self, index: usize) -> Channel {
        let scheme = if self.client_tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.client_addr(index)))
            .expect("invariant: a socket address makes a valid URI");
        if let Some(config) = &self.client_tls {
            endpoint = endpoint.tls_config(config.clone()).expect("TLS settings of the test PKI");
        }
        endpoint.connect_timeout(Duration::from_millis(500)).tcp_nodelay(true).connect_lazy()
    }

    /// Cuts the link from `from` to `to` only; `to` still reaches `from`.
    pub fn cut_one_way(&self, from: usize, to: usize, cut: Cut) {
        apply(self.link(from, to), cut);
    }

    /// Cuts both links between `a` and `b`.
    pub fn cut_both_ways(&self, a: usize, b: usize, cut: Cut) {
        self.cut_one_way(a, b, cut);
        self.cut_one_way(b, a, cut);
    }

    /// Cuts `node` off from every other server, both ways (clients still reach it).
    pub fn isolate(&self, node: usize, cut: Cut) {
        for other in (0..self.servers).filter(|other| *other != node) {
            self.cut_both_ways(node, other, cut);
        }
    }

    /// Cuts every link between `side` and the other servers, both ways.
    pub fn partition(&self, side: &[usize], cut: Cut) {
        for a in side {
            for b in (0..self.servers).filter(|b| !side.contains(b)) {
                self.cut_both_ways(*a, b, cut);
            }
        }
    }

    /// Cuts every link into `node` (its peers' requests), leaving its own requests alone.
    pub fn cut_inbound(&self, node: usize, cut: Cut) {
        for other in (0..self.servers).filter(|other| *other != node) {
            self.cut_one_way(other, node, cut);
        }
    }

    /// Delays both directions of every link to and from `node`, clients' included.
    pub fn delay_node(&self, node: usize, delay: Duration) {
        for other in (0..self.servers).filter(|other| *other != node) {
            self.link(node, other).set_flows(Flow::Delay(delay));
            self.link(other, node).set_flows(Flow::Delay(delay));
        }
        self.client_link(node).set_flows(Flow::Delay(delay));
    }

    /// Delays every peer link (not the clients').
    pub fn delay_all_peers(&self, delay: Duration) {
        for proxy in self.peers.values() {
            proxy.set_flows(Flow::Delay(delay));
        }
    }

    /// Cuts the clients' link to `node`.
    pub fn cut_clients(&self, node: usize, cut: Cut) {
        apply(self.client_link(node), cut);
    }

    /// Every link back to healthy.
    pub fn heal(&self) {
        for proxy in self.peers.values().chain(&self.clients) {
            proxy.heal();
        }
    }

    /// Whether every link is healthy.
    pub fn is_healthy(&self) -> bool {
        self.peers.values().chain(&self.clients).all(Proxy::is_healthy)
    }
}

fn apply(proxy: &Proxy, cut: Cut) {
    match cut {
        Cut::Blackhole => proxy.set_flows(Flow::Blackhole),
        Cut::Drop => proxy.drop_connections(),
        Cut::AnswersBlocked => proxy.set_flow(Direction::Backward, Flow::Blackhole),
    }
}
