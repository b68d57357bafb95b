//! A bare HTTP/1.1 client for the servers' REST port, enough for tests: one request per
//! connection, any headers, the status and the body back.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// POSTs `body` to `http://addr/path` with `headers`; returns the status code (0 when the answer
/// could not be read) and the body. Panics when the server cannot be reached.
pub async fn post(addr: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    try_post(addr, path, headers, body).await.expect("connect to the REST port and send the request")
}

/// Like [`post`], with an error instead of a panic when the connection cannot be made or the
/// request head cannot be sent (a server that is down, for the chaos tests).
pub async fn try_post(
    addr: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    // A server may answer (413) and close before reading a large body: that is not an error.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// A bearer token header.
pub fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}
