//! herald's own share of the latency, read from the `herald_pipeline_latency_seconds` histogram
//! of each instance: from the consuming instance taking a record to the emit on the instance
//! holding the socket, exact to the bucket, with no Kafka or client time in it.

use std::net::SocketAddr;

const BUCKET: &str = "herald_pipeline_latency_seconds_bucket{le=\"";

/// Cumulative counts by upper bound in seconds (the last bound is +Inf), as Prometheus shows them.
pub type Buckets = Vec<(f64, u64)>;

/// The histogram of every server, summed.
pub async fn scrape(servers: &[SocketAddr]) -> anyhow::Result<Buckets> {
    let client = reqwest::Client::new();
    let mut total: Buckets = Vec::new();
    for server in servers {
        let text = client.get(format!("http://{server}/metrics")).send().await?.error_for_status()?.text().await?;
        let buckets = parse(&text);
        anyhow::ensure!(!buckets.is_empty(), "{server}/metrics has no herald_pipeline_latency_seconds histogram");
        if total.is_empty() {
            total = buckets;
        } else {
            anyhow::ensure!(total.len() == buckets.len(), "the servers' histograms have different buckets");
            total.iter_mut().zip(buckets).for_each(|(t, (_, n))| t.1 += n);
        }
    }
    Ok(total)
}

fn parse(text: &str) -> Buckets {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(BUCKET)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// What was recorded between two scrapes.
pub fn since(before: &Buckets, after: &Buckets) -> Buckets {
    if before.is_empty() {
        return after.clone();
    }
    after.iter().zip(before).map(|(&(le, a), &(_, b))| (le, a.saturating_sub(b))).collect()
}

/// The `q` quantile in seconds, interpolated linearly within its bucket as Prometheus's
/// `histogram_quantile` does; `None` without observations. Past the last finite bound it is
/// that bound (a lower bound of the true value).
pub fn quantile(buckets: &Buckets, q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(le, count) in buckets {
        if count as f64 >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = (count - below) as f64;
            return Some(if within == 0.0 { le } else { lower + (le - lower) * (rank - below as f64) / within });
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

/// The share of observations at or under `bound` seconds (which must be a bucket bound).
pub fn fraction_within(buckets: &Buckets, bound: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    let within = buckets.iter().find(|(le, _)| (*le - bound).abs() < 1e-12)?.1;
    (total > 0).then(|| within as f64 / total as f64)
}

/// A counter summed over every server (0 where it is absent).
pub async fn counter(servers: &[SocketAddr], name: &str) -> anyhow::Result<f64> {
    let client = reqwest::Client::new();
    let mut total = 0.0;
    for server in servers {
        let text = client.get(format!("http://{server}/metrics")).send().await?.error_for_status()?.text().await?;
        total += text.lines().filter_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).sum::<f64>();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE herald_pipeline_latency_seconds histogram\n\
        herald_pipeline_latency_seconds_bucket{le=\"0.001\"} 50\n\
        herald_pipeline_latency_seconds_bucket{le=\"0.002\"} 90\n\
        herald_pipeline_latency_seconds_bucket{le=\"0.005\"} 100\n\
        herald_pipeline_latency_seconds_bucket{le=\"+Inf\"} 100\n\
        herald_pipeline_latency_seconds_sum 0.1\n\
        herald_delivery_latency_seconds_bucket{le=\"0.001\"} 7\n";

    #[test]
    fn reads_only_the_pipeline_buckets() {
        assert_eq!(parse(TEXT), vec![(0.001, 50), (0.002, 90), (0.005, 100), (f64::INFINITY, 100)]);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let b = parse(TEXT);
        assert_eq!(quantile(&b, 0.5), Some(0.001));
        assert!((quantile(&b, 0.7).unwrap() - 0.0015).abs() < 1e-9);
        assert!((quantile(&b, 0.95).unwrap() - 0.0035).abs() < 1e-9);
        assert_eq!(fraction_within(&b, 0.002), Some(0.9));
        assert_eq!(quantile(&since(&b, &b), 0.5), None, "nothing recorded in between");
    }

    #[test]
    fn beyond_the_last_bound_is_that_bound() {
        let b = vec![(0.001, 1), (f64::INFINITY, 10)];
        assert_eq!(quantile(&b, 0.99), Some(0.001));
    }
}
