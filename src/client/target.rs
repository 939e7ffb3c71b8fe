//! Which server: a [`Target`] is a URL and the label it is shown by, kept
//! apart from how to connect ([`ConnectOptions`]), so that one set of
//! options can reach many servers.
//!
//! [`ConnectOptions`]: crate::client::ConnectOptions

use crate::error::{Error, Result};

/// A server to talk to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    url: String,
    /// The label given with `LABEL=URL`, if any.
    label: Option<String>,
}

impl Target {
    /// Parses `URL` or `LABEL=URL`. A URL is `http://HOST:PORT`,
    /// `https://HOST:PORT` (TLS) or a bare `HOST:PORT` (http).
    pub fn parse(spec: &str) -> Result<Target> {
        let spec = spec.trim();
        let (label, url) = match spec.split_once('=') {
            Some((label, url)) if is_label(label) => (Some(label.to_string()), url),
            _ => (None, spec),
        };
        Ok(Target {
            url: normalize_server(url)?,
            label,
        })
    }

    /// The URL, normalised.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The label: as given with `LABEL=URL`, else the URL's `HOST:PORT`.
    pub fn label(&self) -> &str {
        match &self.label {
            Some(label) => label,
            None => self
                .url
                .split_once("://")
                .map_or(self.url.as_str(), |(_, authority)| authority),
        }
    }

    /// The server as messages name it: its URL, after its label when it
    /// was given one (`web-1 (https://10.0.0.5:50051)`).
    pub fn name(&self) -> String {
        match &self.label {
            Some(label) => format!("{label} ({})", self.url),
            None => self.url.clone(),
        }
    }

    /// True for `https://`.
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("https://")
    }
}

/// A label is a short name without a scheme or a path: not `http://h:1`.
fn is_label(candidate: &str) -> bool {
    !candidate.is_empty()
        && !candidate.contains("://")
        && !candidate.contains('/')
        && !candidate.chars().any(char::is_whitespace)
}

/// `host:port` -> `http://host:port`; `http://` and `https://` as given.
fn normalize_server(server: &str) -> Result<String> {
    let server = server.trim().trim_end_matches('/');
    if server.is_empty() {
        return Err(Error::Usage("--server is empty".into()));
    }
    if server.starts_with("http://") || server.starts_with("https://") {
        Ok(server.to_string())
    } else if server.contains("://") {
        Err(Error::Usage(format!(
            "--server {server}: unknown scheme (use http://HOST:PORT or https://HOST:PORT)"
        )))
    } else {
        Ok(format!("http://{server}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Server addresses without a scheme mean plain http.
    #[test]
    fn server_urls_are_normalised() {
        assert_eq!(
            normalize_server("127.0.0.1:9").expect("ok"),
            "http://127.0.0.1:9"
        );
        assert_eq!(normalize_server("http://h:1/").expect("ok"), "http://h:1");
        assert_eq!(normalize_server("https://h:1").expect("ok"), "https://h:1");
        assert!(normalize_server("ftp://h:1").is_err());
        assert!(normalize_server("").is_err());
    }

    /// `LABEL=URL` names a server; a URL alone is labelled by its address.
    #[test]
    fn labels() {
        let plain = Target::parse("127.0.0.1:9").expect("plain");
        assert_eq!(
            (plain.url(), plain.label(), plain.name().as_str()),
            ("http://127.0.0.1:9", "127.0.0.1:9", "http://127.0.0.1:9")
        );
        let named = Target::parse("web-1=https://10.0.0.5:50051").expect("named");
        assert_eq!(
            (named.url(), named.label(), named.is_tls()),
            ("https://10.0.0.5:50051", "web-1", true)
        );
        assert_eq!(named.name(), "web-1 (https://10.0.0.5:50051)");
        assert!(Target::parse("web-1=").is_err());
        assert!(Target::parse("web-1=ftp://h:1").is_err());
    }
}
