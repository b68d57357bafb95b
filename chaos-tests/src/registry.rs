//! A container registry that holds no image and asks for Basic credentials: it records the
//! `authorization` header of every request, so a test can see what the Docker engine sent on
//! an agent's behalf. It speaks plain HTTP only: the engine tries TLS first, which it refuses,
//! then plain HTTP, as it does for the loopback registries it treats as insecure.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct FakeRegistry {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<Option<String>>>>,
    serving: tokio::task::JoinHandle<()>,
}

impl FakeRegistry {
    /// Listens on a free loopback port; stops when dropped.
    pub async fn start() -> std::io::Result<FakeRegistry> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let serving = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, Arc::clone(&record)));
            }
        });
        Ok(FakeRegistry { address, seen, serving })
    }

    /// An image reference on this registry.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.address)
    }

    /// The `authorization` header of each request so far (`None` for a request without one).
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The header a client sends for `username` and `password`.
    pub fn basic(username: &str, password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}")))
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// One request per connection: a challenge without credentials, "manifest unknown" with any.
async fn answer(mut stream: TcpStream, record: Arc<Mutex<Vec<Option<String>>>>) {
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
        // A TLS client hello: refused by closing.
        if request.first() == Some(&0x16) || request.len() > 64 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&request);
    let authorization = text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.trim().to_string());
    let (status, body) = match authorization {
        None => ("401 Unauthorized", r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#),
        Some(_) => ("404 Not Found", r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#),
    };
    record.lock().unwrap_or_else(|p| p.into_inner()).push(authorization);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nDocker-Distribution-API-Version: registry/2.0\r\n\
         WWW-Authenticate: Basic realm=\"xene-test\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}
