//! Probes production for post-deploy: the project's health URL (2xx is a success;
//! any other status, a timeout or a refused connection is a failure) and its
//! Prometheus-format metrics URL (the request counter by status code). Each call has
//! the probe timeout; a probe never fails the pass, it becomes a failed sample.

use crate::adapters::http;
use crate::core::plane::Project;
use crate::core::post_deploy::{parse_counters, Sample};

/// Probes `project` once with `client` and returns the sample taken at `now`.
pub fn probe(
    client: &reqwest::blocking::Client,
    project: &Project,
    metric: &str,
    now: i64,
) -> Sample {
    let (health_ok, health_detail) = match &project.health_url {
        None => (None, "no health_url".to_string()),
        Some(url) => match client.get(url.as_str()).send() {
            Ok(r) => {
                let code = r.status().as_u16();
                (Some(r.status().is_success()), format!("HTTP {code}"))
            }
            Err(e) => (Some(false), http::classify(&e).to_string()),
        },
    };
    let (counters, metrics_detail) = match &project.metrics_url {
        None => (None, String::new()),
        Some(url) => match client.get(url.as_str()).send() {
            Ok(r) if r.status().is_success() => match http::read_text(r) {
                Ok(page) => match parse_counters(&page, metric) {
                    Ok(c) => (Some(c), String::new()),
                    Err(e) => (None, format!("metrics: {e}")),
                },
                Err(e) => (None, format!("metrics: {e}")),
            },
            Ok(r) => (None, format!("metrics HTTP {}", r.status().as_u16())),
            Err(e) => (None, format!("metrics: {}", http::classify(&e))),
        },
    };
    Sample {
        at: now,
        health_ok,
        health_detail,
        counters,
        metrics_detail,
    }
}
