//! A minimal HTTP/1.1 GET for the admin endpoints of our own children.
//!
//! The admin API is ours, local and tiny; a full HTTP client would add
//! compile time to the demo for nothing.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET path` on `addr`: status code and body.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let fut = async {
        let mut tcp = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad HTTP answer from {addr}"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("chunked answers are not expected from the admin API");
    }
    Ok((status, body.to_owned()))
}

/// Sums samples of `metric` in Prometheus text whose labels contain every `want` pair.
pub fn sum_metric(text: &str, metric: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name_labels, value) = l.rsplit_once(' ')?;
            let (name, labels) = match name_labels.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (name_labels, ""),
            };
            if name != metric {
                return None;
            }
            let ok = want
                .iter()
                .all(|(k, v)| labels.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            if !ok {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// Label values of `label` among samples of `metric`, with their sums.
pub fn by_label(
    text: &str,
    metric: &str,
    label: &str,
    want: &[(&str, &str)],
) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = name_labels.split_once('{') else {
            continue;
        };
        if name != metric {
            continue;
        }
        let labels = labels.trim_end_matches('}');
        if !want
            .iter()
            .all(|(k, v)| labels.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            continue;
        }
        let Some(v) = labels.split(',').find_map(|kv| {
            kv.strip_prefix(&format!("{label}=\""))
                .map(|v| v.trim_end_matches('"').to_owned())
        }) else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        match out.iter_mut().find(|(k, _)| *k == v) {
            Some((_, sum)) => *sum += value,
            None => out.push((v, value)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE tls_handshakes counter
tls_handshakes_total{side=\"client\",kx_group=\"X25519MLKEM768\",result=\"success\"} 3
tls_handshakes_total{side=\"server\",kx_group=\"X25519MLKEM768\",result=\"success\"} 2
tls_handshakes_total{side=\"client\",kx_group=\"none\",result=\"failure\"} 1
config_version 7
";

    #[test]
    fn sums_and_groups_samples() {
        assert_eq!(
            sum_metric(TEXT, "tls_handshakes_total", &[("result", "success")]),
            5.0
        );
        assert_eq!(sum_metric(TEXT, "config_version", &[]), 7.0);
        let groups = by_label(
            TEXT,
            "tls_handshakes_total",
            "kx_group",
            &[("result", "success")],
        );
        assert_eq!(groups, vec![("X25519MLKEM768".to_owned(), 5.0)]);
    }
}
