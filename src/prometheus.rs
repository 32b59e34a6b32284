//! One reader of the Prometheus text exposition format (what the consumer's `/metrics` serves):
//! the metric families and their types, one series' value, a sum over the series of a name that
//! carry some labels, and a histogram with its buckets — for the consumer's tests and the
//! benchmarks' per-stage figures.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The metric name (for histograms with its `_bucket`, `_sum` or `_count` suffix).
    pub name: &'a str,
    /// The series exactly as rendered: the name and its `{…}`, if any.
    pub series: &'a str,
    /// The labels, values as rendered (escapes kept), in their order.
    pub labels: Vec<(&'a str, &'a str)>,
    /// The value.
    pub value: f64,
}

impl Sample<'_> {
    /// Whether the sample carries every `(label, value)` of `labels`.
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|want| self.labels.contains(want))
    }

    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
    }
}

/// Every sample of an exposition text (comments and lines that do not parse skipped).
pub fn samples(exposition: &str) -> impl Iterator<Item = Sample<'_>> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_line)
}

fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let (labels, series_end) = if line[name_end..].starts_with('{') {
        let (labels, len) = parse_labels(&line[name_end + 1..])?;
        (labels, name_end + 1 + len)
    } else {
        (Vec::new(), name_end)
    };
    let value = number(line[series_end..].split_whitespace().next()?)?;
    Some(Sample {
        name,
        series: &line[..series_end],
        labels,
        value,
    })
}

/// A sample value or bucket bound (`+Inf` included).
fn number(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        v => v.parse().ok(),
    }
}

/// The `k="v",…}` after a `{`: the pairs and the length up to and including the `}`.
fn parse_labels(text: &str) -> Option<(Vec<(&str, &str)>, usize)> {
    let mut labels = Vec::new();
    let mut at = 0;
    loop {
        let rest = &text[at..];
        if rest.starts_with('}') {
            return Some((labels, at + 1));
        }
        let eq = rest.find("=\"")?;
        let key = rest[..eq].trim_start_matches(',').trim();
        let value_start = at + eq + 2;
        // The value ends at the first quote that is not escaped.
        let mut escaped = false;
        let len = text[value_start..].find(|c: char| {
            let end = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            end
        })?;
        labels.push((key, &text[value_start..value_start + len]));
        at = value_start + len + 1;
        if text[at..].starts_with(',') {
            at += 1;
        }
    }
}

/// The metric families of an exposition text: name → type (from `# TYPE` lines).
pub fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.trim().to_owned()))
        .collect()
}

/// The value of the series `series` (its name and labels exactly as rendered, e.g.
/// `chatlog_consumer_records_total{outcome="persisted"}`, or an unlabelled gauge's name).
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    samples(exposition)
        .find(|s| s.series == series)
        .map(|s| s.value)
}

/// The sum of the values of `name`'s series that carry every label of `labels` (all of them
/// when `labels` is empty); 0 when none does.
pub fn sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(exposition)
        .filter(|s| s.name == name && s.has(labels))
        .map(|s| s.value)
        .sum()
}

/// A histogram summed over the series that carry some labels: cumulative buckets, sum, count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// `(upper bound, cumulative count)`, ascending bound.
    pub buckets: Vec<(f64, f64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: f64,
}

impl Histogram {
    /// Histogram `name` of an exposition text, over its series carrying every label of `labels`.
    pub fn parse(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Histogram {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for s in samples(exposition).filter(|s| s.name == bucket && s.has(labels)) {
            let Some(le) = s.label("le").and_then(number) else {
                continue;
            };
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, count)) => *count += s.value,
                None => buckets.push((le, s.value)),
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram {
            buckets,
            sum: sum(exposition, &format!("{name}_sum"), labels),
            count: sum(exposition, &format!("{name}_count"), labels),
        }
    }

    /// The observations of `self` that are not in `earlier` (the same histogram, read before).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| {
                    let before = earlier
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |(_, c)| *c);
                    (*le, c - before)
                })
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// The upper bound of the bucket holding quantile `q` (Prometheus' resolution); NaN when
    /// empty.
    pub fn quantile_bound(&self, q: f64) -> f64 {
        let want = q * self.count;
        self.buckets
            .iter()
            .find(|(_, c)| *c >= want)
            .map_or(f64::NAN, |(le, _)| *le)
    }

    /// The mean observation; 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE d histogram
d_bucket{stage=\"cql\",le=\"0.1\"} 2
d_bucket{stage=\"cql\",le=\"1\"} 3
d_bucket{stage=\"cql\",le=\"+Inf\"} 4
d_sum{stage=\"cql\"} 6.5
d_count{stage=\"cql\"} 4
d_bucket{stage=\"redis\",le=\"0.1\"} 1
d_bucket{stage=\"redis\",le=\"1\"} 1
d_bucket{stage=\"redis\",le=\"+Inf\"} 1
d_sum{stage=\"redis\"} 0.05
d_count{stage=\"redis\"} 1
# TYPE r counter
r{outcome=\"a, \\\"b\\\"\",x=\"1\"} 7
r{outcome=\"c\",x=\"1\"} 5
g 0.5
";

    #[test]
    fn families_and_samples() {
        assert_eq!(families(TEXT)["d"], "histogram");
        assert_eq!(families(TEXT)["r"], "counter");
        assert_eq!(sample(TEXT, "g"), Some(0.5));
        assert_eq!(sample(TEXT, "r{outcome=\"c\",x=\"1\"}"), Some(5.0));
        assert_eq!(sample(TEXT, "r"), None);
        assert_eq!(sum(TEXT, "r", &[("x", "1")]), 12.0);
        assert_eq!(sum(TEXT, "r", &[("outcome", "a, \\\"b\\\"")]), 7.0);
        assert_eq!(sum(TEXT, "r", &[("x", "2")]), 0.0);
    }

    #[test]
    fn histogram_of_some_labels_and_of_all() {
        let cql = Histogram::parse(TEXT, "d", &[("stage", "cql")]);
        assert_eq!(cql.buckets, [(0.1, 2.0), (1.0, 3.0), (f64::INFINITY, 4.0)]);
        assert_eq!((cql.sum, cql.count), (6.5, 4.0));
        assert_eq!(cql.quantile_bound(0.5), 0.1);
        assert_eq!(cql.quantile_bound(0.99), f64::INFINITY);
        assert_eq!(cql.mean(), 6.5 / 4.0);
        let all = Histogram::parse(TEXT, "d", &[]);
        assert_eq!(all.buckets, [(0.1, 3.0), (1.0, 4.0), (f64::INFINITY, 5.0)]);
        let grown = all.since(&cql);
        assert_eq!(grown.count, 1.0);
        assert_eq!(grown.buckets[0], (0.1, 1.0));
        assert!(Histogram::default().quantile_bound(0.5).is_nan());
        assert_eq!(Histogram::default().mean(), 0.0);
    }
}
