//! The fault-injecting TCP proxy the chaos scenarios put on every link (DESIGN §14): it
//! passes bytes both ways, delays them, holds them while blackholed and delivers them after,
//! drops connections, and stops when dropped.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use xene_chaos_tests::proxy::{Direction, Flow, Proxy};

/// An echo server on a free loopback port; it runs until the test's runtime ends.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(message).await?;
    let mut got = vec![0u8; message.len()];
    stream.read_exact(&mut got).await?;
    Ok(got)
}

#[tokio::test]
async fn passes_delays_holds_and_drops() {
    let proxy = Proxy::start(echo_server().await).await.expect("start proxy");
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(round_trip(&mut stream, b"hello").await.expect("pass"), b"hello");

    // Delay on each direction adds up.
    proxy.set_flow(Direction::Forward, Flow::Delay(Duration::from_millis(150)));
    proxy.set_flow(Direction::Backward, Flow::Delay(Duration::from_millis(100)));
    let sent = Instant::now();
    assert_eq!(round_trip(&mut stream, b"slow").await.expect("delayed"), b"slow");
    assert!(sent.elapsed() >= Duration::from_millis(250), "took {:?}", sent.elapsed());

    // A blackholed answer is held, not lost: it arrives once the direction passes again.
    proxy.set_flows(Flow::Pass);
    proxy.set_flow(Direction::Backward, Flow::Blackhole);
    stream.write_all(b"held").await.expect("write");
    let mut got = [0u8; 4];
    let early = tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut got)).await;
    assert!(early.is_err(), "nothing comes back through a blackhole");
    proxy.heal();
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut got)).await.expect("healed").expect("read");
    assert_eq!(&got, b"held");

    // Dropping closes the open connection and refuses new ones until healed.
    proxy.drop_connections();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(closed, Ok(0) | Err(_)), "the open connection is closed");
    let mut refused = TcpStream::connect(proxy.addr()).await.expect("accepted, then closed");
    let answer = tokio::time::timeout(Duration::from_secs(5), round_trip(&mut refused, b"x")).await.expect("in time");
    assert!(answer.is_err(), "a new connection is closed while dropping");
    proxy.heal();
    let mut again = TcpStream::connect(proxy.addr()).await.expect("connect after heal");
    assert_eq!(round_trip(&mut again, b"back").await.expect("healed"), b"back");
    assert!(proxy.is_healthy());

    // Dropping the proxy stops it: its connections close and its port no longer forwards.
    let addr = proxy.addr();
    drop(proxy);
    let closed = tokio::time::timeout(Duration::from_secs(5), again.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(closed, Ok(0) | Err(_)), "connections close with the proxy");
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is gone");
}
