//! One HTTP GET for the harnesses: a fresh HTTP/1.1 connection per request (`Connection: close`),
//! the status line and the body, a chunked body decoded. Enough for the consumer's `/healthz`,
//! `/readyz` and `/metrics` and a test Prometheus server's API; no client library, so a test sees
//! exactly what went over the wire.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `GET path_and_query` on `addr`: (status line, body). An error if the connection fails or
/// closes before a whole response head.
pub fn get_line(addr: SocketAddr, path_and_query: &str) -> std::io::Result<(String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP header end in {text:?}")))?;
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    Ok((status_line, body))
}

/// [`get_line`] with the status code: (status, body).
pub fn get(addr: SocketAddr, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let (line, body) = get_line(addr, path_and_query)?;
    Ok((status_code(&line)?, body))
}

/// [`get_line`] off the async workers (a server under test may run on them).
pub async fn get_line_async(
    addr: SocketAddr,
    path_and_query: &str,
) -> std::io::Result<(String, String)> {
    let path = path_and_query.to_owned();
    tokio::task::spawn_blocking(move || get_line(addr, &path))
        .await
        .map_err(std::io::Error::other)?
}

/// [`get`] off the async workers.
pub async fn get_async(addr: SocketAddr, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let (line, body) = get_line_async(addr, path_and_query).await?;
    Ok((status_code(&line)?, body))
}

/// The code of a status line (`HTTP/1.1 503 Service Unavailable` → 503).
pub fn status_code(line: &str) -> std::io::Result<u16> {
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut rest: &str) -> std::io::Result<String> {
    let bad = || std::io::Error::other("malformed chunked body");
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or_else(bad)?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).ok_or_else(bad)?);
        rest = after
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .ok_or_else(bad)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunk_joins_chunks_and_ignores_extensions() {
        assert_eq!(
            dechunk("4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n").unwrap(),
            "Wikipedia"
        );
        assert!(dechunk("4\r\nWi").is_err());
    }

    #[test]
    fn status_code_reads_the_second_word() {
        assert_eq!(
            status_code("HTTP/1.1 503 Service Unavailable").unwrap(),
            503
        );
        assert!(status_code("garbage").is_err());
    }
}
