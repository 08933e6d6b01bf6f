//! Reading a Prometheus endpoint the way Prometheus does: one HTTP GET of `/metrics`, then the
//! text parsed into samples, so tests can compare numbers with what happened.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};

/// One sample: a metric name (with its `_total`, `_bucket`, ... suffix), labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's name.
    pub name: String,
    /// Its labels, in the order written.
    pub labels: Vec<(String, String)>,
    /// The number after the labels (a count, gauge reading or bucket count).
    pub value: f64,
}

/// One scrape of an endpoint.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    /// Every sample.
    pub samples: Vec<Sample>,
    /// The families declared by `# TYPE` lines, as they appear in samples (counters with their
    /// `_total`).
    pub families: Vec<String>,
}

/// GETs `http://addr{path}` (plain HTTP/1.1, as Prometheus and Kubernetes probes do) and
/// returns the response's head and body; an answer slower than 30 s is an error.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(String, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (head, body) = exchange(addr, request.as_bytes())?;
    Ok((head, String::from_utf8_lossy(&body).into_owned()))
}

/// One HTTP/1.0 request (so the answer is never chunked) of `method` on `path` with `headers`
/// and `body`; returns the status code, the head and the body. For the test servers'
/// own HTTP APIs (Prometheus' queries, an S3 server's buckets).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, String, Vec<u8>)> {
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    let (head, body) = exchange(addr, &bytes)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{method} {path} on {addr}: no status in {head:?}"))?;
    Ok((status, head, body))
}

/// Sends `request` and reads the whole answer (the server closes the connection), split into
/// its head and body.
fn exchange(addr: SocketAddr, request: &[u8]) -> anyhow::Result<(String, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("an HTTP response has a head")?;
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    Ok((head, response[end + 4..].to_vec()))
}

impl Scrape {
    /// GETs `http://addr/metrics` and parses it.
    pub fn get(addr: SocketAddr) -> anyhow::Result<Scrape> {
        let (head, body) = http_get(addr, "/metrics")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET /metrics on {addr}: {head}\n{body}");
        }
        Scrape::parse(body.as_str())
    }

    /// Parses Prometheus or OpenMetrics text.
    pub fn parse(text: &str) -> anyhow::Result<Scrape> {
        let mut scrape = Scrape::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(declaration) = line.strip_prefix("# TYPE ") {
                let mut words = declaration.split_whitespace();
                let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                    bail!("bad TYPE line: {line}");
                };
                let exposed = if kind == "counter" && !name.ends_with("_total") {
                    format!("{name}_total")
                } else {
                    name.to_string()
                };
                scrape.families.push(exposed);
            } else if !line.starts_with('#') {
                scrape.samples.push(parse_sample(line)?);
            }
        }
        Ok(scrape)
    }

    /// The value of the sample named `name` whose labels include `labels`; `None` when there is
    /// none, an error when several match.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self.matching(name, labels);
        let first = matching.next()?;
        assert!(
            matching.next().is_none(),
            "several samples of {name} match {labels:?}"
        );
        Some(first.value)
    }

    /// The sum of the samples named `name` whose labels include `labels` (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The samples named `name` whose labels include `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
    }
}

fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let (series, rest) = if line.contains('{') {
        let close = line.rfind('}').context("unclosed labels")?;
        (&line[..close + 1], &line[close + 1..])
    } else {
        line.split_at(line.find(' ').context("a sample has a value")?)
    };
    let value = rest
        .split_whitespace()
        .next()
        .context("a sample has a value")?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("value of {line}"))?,
    };
    let (name, labels) = match series.split_once('{') {
        Some((name, labels)) => (name, parse_labels(labels.trim_end_matches('}'))?),
        None => (series, Vec::new()),
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_labels(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").context("a label is key=\"value\"")?;
        let end = after.find('"').context("unclosed label value")?;
        labels.push((key.trim().to_string(), after[..end].to_string()));
        rest = after[end + 1..].trim_start_matches(',').trim();
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_text_parses_into_samples_and_families() {
        let text = "# HELP x_total Things.\n# TYPE x counter\nx_total{kind=\"a\",p=\"1\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n# EOF\n";
        let scrape = Scrape::parse(text).unwrap();
        assert_eq!(scrape.families, ["x_total", "h"]);
        assert_eq!(scrape.value("x_total", &[("kind", "a")]), Some(3.0));
        assert_eq!(scrape.value("h_bucket", &[("le", "+Inf")]), Some(2.0));
        assert_eq!(scrape.sum("h_count", &[]), 2.0);
        assert_eq!(scrape.value("x_total", &[("kind", "b")]), None);
    }
}
