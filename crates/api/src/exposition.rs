//! The Prometheus exposition formats a `/metrics` endpoint serves (the
//! controller's and the node agent's), from what `prometheus-client` writes.

/// The exposition a scraper asked for: OpenMetrics when its `Accept` names
/// it (Prometheus does), else the classic text format 0.0.4, which older
/// tools such as `promtool check metrics` read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`.
    Classic,
}

impl Format {
    /// The format for a request's `Accept` header.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Classic,
        }
    }

    /// The answer's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// `open_metrics` (what the encoder writes) in this format. The two
    /// differ only in what the classic one lacks: a counter's HELP and TYPE
    /// name its `_total` sample, and there are no UNIT or EOF lines.
    pub fn render(self, open_metrics: String) -> String {
        if self == Format::OpenMetrics {
            return open_metrics;
        }
        let counters: std::collections::HashSet<&str> = open_metrics
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(open_metrics.len());
        for line in open_metrics.lines() {
            if line.starts_with("# UNIT ") || line == "# EOF" {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                counters
                    .contains(name)
                    .then(|| format!("{prefix}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_format_names_counter_samples_and_drops_unit_and_eof() {
        let open_metrics = "# HELP m_requests Requests.\n# TYPE m_requests counter\n\
            m_requests_total{a=\"b\"} 3\n# HELP m_latency_seconds Latency.\n\
            # TYPE m_latency_seconds histogram\n# UNIT m_latency_seconds seconds\n\
            m_latency_seconds_count 1\n# EOF\n";
        assert_eq!(
            Format::Classic.render(open_metrics.to_string()),
            "# HELP m_requests_total Requests.\n# TYPE m_requests_total counter\n\
             m_requests_total{a=\"b\"} 3\n# HELP m_latency_seconds Latency.\n\
             # TYPE m_latency_seconds histogram\nm_latency_seconds_count 1\n"
        );
        assert_eq!(
            Format::OpenMetrics.render(open_metrics.to_string()),
            open_metrics
        );
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("*/*")), Format::Classic);
        assert_eq!(Format::from_accept(None), Format::Classic);
    }
}
