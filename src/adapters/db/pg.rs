//! Connecting to PostgreSQL: the URL, TLS with rustls, and the URL as it may be shown.
//!
//! `ORCH_DB=postgres://user:password@host:port/db?sslmode=...` takes libpq's URL form.
//! `sslmode=disable` connects in plain text; `prefer` (the default) tries TLS and falls
//! back; `require` insists on TLS. Certificates are checked against the Mozilla roots
//! (`webpki-roots`) plus, when the URL carries `sslrootcert=/path/ca.pem`, that file's
//! certificates (a self-hosted CA). A server that takes longer than
//! [`CONNECT_TIMEOUT`] to answer is an error, not a hang.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};

/// How long connecting may take unless the URL says (`connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `url`.
///
/// # Errors
/// When the URL is malformed, the CA file cannot be read, or the server refuses or does
/// not answer; the message shows the URL without its password.
pub fn connect(url: &str) -> Result<postgres::Client> {
    let shown = redact(url);
    let (url, root_cert) = take_param(url, "sslrootcert");
    let mut config = postgres::Config::from_str(&url)
        .with_context(|| format!("ORCH_DB {shown} is not a valid PostgreSQL URL"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("orch");
    }
    let client = if config.get_ssl_mode() == postgres::config::SslMode::Disable {
        config.connect(postgres::NoTls)
    } else {
        let tls = tls_config(root_cert.as_deref())
            .with_context(|| format!("setting up TLS for {shown}"))?;
        config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
    };
    client.with_context(|| format!("connecting to the database {shown}"))
}

/// The TLS client configuration: Mozilla's roots and the CA file, if any.
fn tls_config(root_cert: Option<&str>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = root_cert {
        let mut n = 0;
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading sslrootcert {path}"))?
        {
            roots
                .add(cert.with_context(|| format!("reading a certificate of {path}"))?)
                .with_context(|| format!("adding a certificate of {path}"))?;
            n += 1;
        }
        anyhow::ensure!(n > 0, "sslrootcert {path} holds no PEM certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Removes query parameter `name` from `url`; returns the URL left and its value.
fn take_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some((k, v)) if k == name => {
                value = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, value)
}

/// `url` with its password (and a `password=` parameter) replaced by `***`.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    // The client reads the user info up to the first '@', whatever the password holds
    // ('/', '?', '#'), so the password is everything from the first ':' to there.
    let (authority, tail) = match rest.split_once('@') {
        Some((userinfo, after)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') {
                format!("{user}:***@")
            } else {
                format!("{user}@")
            };
            let (host, tail) = match after.find(['/', '?']) {
                Some(i) => after.split_at(i),
                None => (after, ""),
            };
            (format!("{masked}{host}"), tail)
        }
        None => match rest.find(['/', '?']) {
            Some(i) => (rest[..i].to_owned(), &rest[i..]),
            None => (rest.to_owned(), ""),
        },
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("postgres://orch:s3cret@db.lan:5432/orch?sslmode=require"),
            "postgres://orch:***@db.lan:5432/orch?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://orch@127.0.0.1/orch?password=s3cret&sslmode=disable"),
            "postgresql://orch@127.0.0.1/orch?password=***&sslmode=disable"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact("postgres://a:b@h"), "postgres://a:***@h");
        assert_eq!(
            redact("postgres://orch:ab/cd?e#f@db:5432/orch"),
            "postgres://orch:***@db:5432/orch"
        );
        assert_eq!(redact("POSTGRES://u:pw@h/db"), "POSTGRES://u:***@h/db");
    }

    #[test]
    fn the_ca_file_is_taken_out_of_the_url() {
        assert_eq!(
            take_param(
                "postgres://h/db?sslrootcert=/ca.pem&sslmode=require",
                "sslrootcert"
            ),
            (
                "postgres://h/db?sslmode=require".to_owned(),
                Some("/ca.pem".to_owned())
            )
        );
        assert_eq!(
            take_param("postgres://h/db?sslrootcert=/ca.pem", "sslrootcert"),
            ("postgres://h/db".to_owned(), Some("/ca.pem".to_owned()))
        );
        assert_eq!(
            take_param("postgres://h/db", "x"),
            ("postgres://h/db".to_owned(), None)
        );
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let err = connect("postgres://u:pw@127.0.0.1:1/db?sslmode=bogus")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a valid PostgreSQL URL"), "{err}");
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let err = format!(
            "{:#}",
            connect("postgres://u@127.0.0.1:1/db?sslrootcert=/nonexistent/ca.pem")
                .err()
                .unwrap()
        );
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn a_ca_file_without_a_certificate_or_with_a_broken_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for (file, says) in [(&empty, "holds no PEM certificate"), (&broken, "")] {
            let url = format!(
                "postgres://u:pw@127.0.0.1:1/db?sslmode=require&sslrootcert={}",
                file.display()
            );
            let err = format!("{:#}", connect(&url).err().unwrap());
            assert!(err.contains(&file.display().to_string()), "{err}");
            assert!(err.contains(says), "{err}");
            assert!(!err.contains("pw@"), "{err}");
        }
    }
}
