//! Per-service golden metrics (success rate, request rate, latency
//! percentiles) read from the client proxy's own `/metrics`, as a
//! Linkerd user reads them from its proxies.

use serde::Serialize;

use crate::http::{by_label, sum_metric};

/// One service's golden metrics over a run.
#[derive(Debug, Serialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Golden {
    /// Requests the client proxy carried.
    pub requests: u64,
    /// Share of responses that succeeded (0 to 1).
    pub success_rate: f64,
    /// Requests per second over the run.
    pub rps: f64,
    /// Median response latency, ms (from the histogram, as Prometheus'
    /// `histogram_quantile` reads it).
    pub p50_ms: f64,
    /// 99th percentile, ms (likewise; past the last bucket, that bound).
    pub p99_ms: f64,
}

/// `service`'s golden metrics in the client proxy's metrics `text`, over
/// `seconds` of traffic.
pub fn of(text: &str, service: &str, seconds: f64) -> Golden {
    let out = [("direction", "outbound"), ("service", service)];
    let requests = sum_metric(text, "request_total", &out);
    let responses = sum_metric(text, "response_total", &out);
    let ok = sum_metric(
        text,
        "response_total",
        &[
            ("direction", "outbound"),
            ("service", service),
            ("classification", "success"),
        ],
    );
    let mut buckets: Vec<(f64, f64)> =
        by_label(text, "response_latency_seconds_bucket", "le", &out)
            .into_iter()
            .filter_map(|(le, n)| Some((le.parse::<f64>().ok()?, n)))
            .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = buckets.last().map_or(0.0, |b| b.1);
    let last_finite = buckets
        .iter()
        .rev()
        .map(|b| b.0)
        .find(|le| le.is_finite())
        .unwrap_or(0.0);
    // As Prometheus' histogram_quantile: linear within the bucket that
    // holds the rank; past the last finite bucket, that bucket's bound.
    let quantile = |q: f64| {
        if count <= 0.0 {
            return 0.0;
        }
        let rank = q * count;
        let mut below = (0.0, 0.0);
        for &(le, n) in &buckets {
            if n >= rank {
                if !le.is_finite() {
                    return last_finite * 1000.0;
                }
                let (lower, before) = below;
                let share = if n > before {
                    (rank - before) / (n - before)
                } else {
                    1.0
                };
                return (lower + (le - lower) * share) * 1000.0;
            }
            below = (le, n);
        }
        last_finite * 1000.0
    };
    let round = |x: f64, places: i32| {
        let scale = 10f64.powi(places);
        (x * scale).round() / scale
    };
    let success_rate = if responses > 0.0 { ok / responses } else { 0.0 };
    let rps = if seconds > 0.0 {
        requests / seconds
    } else {
        0.0
    };
    Golden {
        requests: requests as u64,
        success_rate: round(success_rate, 4),
        rps: round(rps, 1),
        p50_ms: round(quantile(0.5), 3),
        p99_ms: round(quantile(0.99), 3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_services_golden_metrics() {
        let text = "\
request_total{direction=\"outbound\",service=\"web\"} 100
response_total{direction=\"outbound\",service=\"web\",peer_identity=\"x\",status_code=\"200\",classification=\"success\",grpc_status=\"\"} 98
response_total{direction=\"outbound\",service=\"web\",peer_identity=\"x\",status_code=\"503\",classification=\"failure\",grpc_status=\"\"} 2
response_latency_seconds_bucket{le=\"0.0005\",direction=\"outbound\",service=\"web\",status_code=\"200\"} 40
response_latency_seconds_bucket{le=\"0.001\",direction=\"outbound\",service=\"web\",status_code=\"200\"} 90
response_latency_seconds_bucket{le=\"0.0025\",direction=\"outbound\",service=\"web\",status_code=\"200\"} 98
response_latency_seconds_bucket{le=\"+Inf\",direction=\"outbound\",service=\"web\",status_code=\"200\"} 98
response_latency_seconds_bucket{le=\"0.001\",direction=\"outbound\",service=\"web\",status_code=\"503\"} 2
response_latency_seconds_bucket{le=\"+Inf\",direction=\"outbound\",service=\"web\",status_code=\"503\"} 2
request_total{direction=\"outbound\",service=\"grpc\"} 7
";
        let g = of(text, "web", 10.0);
        assert_eq!(g.requests, 100);
        assert!((g.success_rate - 0.98).abs() < 1e-9);
        assert!((g.rps - 10.0).abs() < 1e-9);
        // Rank 50 lies between the 0.5 ms bucket (40) and the 1 ms one (92).
        assert_eq!(g.p50_ms, 0.596, "{}", g.p50_ms);
        assert_eq!(g.p99_ms, 2.5, "past the last finite bucket: that bound");
    }
}
