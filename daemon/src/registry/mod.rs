//! Clients for where models come from: Ollama-protocol registries (Docker v2 manifests and blobs,
//! the bearer-token challenge, redirects to blob hosts), Hugging Face (its file listing and
//! `resolve` layout) and plain URLs. One [`Http`] per pull: rustls TLS (no OpenSSL), proxies from
//! the environment (`HTTPS_PROXY`, `NO_PROXY`, ...), a connect timeout, a stall timeout on every
//! wait for bytes, plain http only with `--insecure` or for `store.insecure_hosts`, and errors
//! turned into one actionable line.

pub mod auth;
pub mod download;
pub mod hf;
pub mod ollama;
pub mod source;

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode, Url};

use crate::error::{Error, Result};
use crate::store::config::StoreConfig;

/// How one pull reaches the network.
#[derive(Debug)]
pub struct Http {
    client: reqwest::Client,
    insecure: bool,
    insecure_hosts: Vec<String>,
    /// No bytes for this long fails a wait.
    pub stall: Duration,
    /// Retries of a failed part.
    pub retries: u32,
    tokens: auth::Tokens,
    hf_token: Option<String>,
    hf_origin: String,
}

/// Whether `url` may be fetched over its scheme: https always, http only when allowed.
fn scheme_allowed(url: &Url, insecure: bool, insecure_hosts: &[String]) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => insecure || insecure_hosts.iter().any(|h| h.eq_ignore_ascii_case(&host_port(url))),
        _ => false,
    }
}

/// `host` or `host:port` of a URL, as `store.insecure_hosts` lists them.
pub fn host_port(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

impl Http {
    /// A client for one pull under `config`; `insecure` is the pull's `--insecure`.
    pub fn new(config: &StoreConfig, insecure: bool) -> Result<Http> {
        // reqwest is built without a default crypto provider; ring is ours (a second install is
        // a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let insecure_hosts = config.insecure_hosts.clone();
        let policy_hosts = insecure_hosts.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("more than 10 redirects");
            }
            if scheme_allowed(attempt.url(), insecure, &policy_hosts) {
                attempt.follow()
            } else {
                let to = format!("{}://{}", attempt.url().scheme(), host_port(attempt.url()));
                attempt.error(format!("refusing a redirect to {to}: plain http needs --insecure"))
            }
        });
        let client = reqwest::Client::builder()
            .user_agent(concat!("hyperllama/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .redirect(redirects)
            .tls_danger_accept_invalid_certs(insecure)
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;
        let hf_origin =
            Url::parse(&config.hf_endpoint).map(|u| u.origin().ascii_serialization()).unwrap_or_default();
        let hf_token = config
            .hf_token
            .clone()
            .or_else(|| std::env::var("HF_TOKEN").ok())
            .filter(|t| !t.trim().is_empty());
        Ok(Http {
            client,
            insecure,
            insecure_hosts,
            stall: config.stall_timeout,
            retries: config.retries,
            tokens: auth::Tokens::default(),
            hf_token,
            hf_origin,
        })
    }

    /// Fails unless `url` may be fetched (https, or http when allowed).
    pub fn check_url(&self, url: &Url) -> Result<()> {
        if scheme_allowed(url, self.insecure, &self.insecure_hosts) {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "refusing {}://{}: plain http needs --insecure (or list the host in store.insecure_hosts)",
            url.scheme(),
            host_port(url)
        )))
    }

    /// GET `url` with `headers`; answers a bearer-token challenge once. The response's status is
    /// not checked.
    pub async fn get(&self, url: &Url, headers: HeaderMap) -> Result<Response> {
        self.check_url(url)?;
        let mut auth_header = self.tokens.cached(url).or_else(|| self.hf_authorization(url));
        for attempt in 0..2 {
            let mut request = self.client.get(url.clone()).headers(headers.clone());
            if let Some(value) = &auth_header {
                request = request.header(reqwest::header::AUTHORIZATION, value.clone());
            }
            let response = self.send(request, url).await?;
            if response.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                return Ok(response);
            }
            let Some(challenge) = auth::Challenge::from_response(&response) else { return Ok(response) };
            auth_header = Some(self.tokens.fetch(self, url, &challenge).await?);
        }
        Err(Error::Internal("unreachable: authorization loop".into()))
    }

    /// A HEAD request for `url` (sent with [`Http::send`]).
    pub fn head(&self, url: &Url) -> reqwest::RequestBuilder {
        self.client.head(url.clone())
    }

    /// Sends a request, bounding the wait for response headers by the stall timeout.
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder, url: &Url) -> Result<Response> {
        match tokio::time::timeout(self.stall, request.send()).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(network_error(&e, url)),
            Err(_) => Err(Error::Registry(format!(
                "{} did not answer within {}",
                host_port(url),
                humantime::format_duration(self.stall)
            ))),
        }
    }

    /// The Hugging Face token, for Hugging Face's own origin only.
    fn hf_authorization(&self, url: &Url) -> Option<HeaderValue> {
        let token = self.hf_token.as_ref()?;
        if url.origin().ascii_serialization() != self.hf_origin {
            return None;
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Reads a small response body (manifests, listings, tokens), at most `limit` bytes.
    pub async fn small_body(&self, mut response: Response, limit: usize, url: &Url) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(self.stall, response.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => return Ok(body),
                Ok(Err(e)) => return Err(network_error(&e, url)),
                Err(_) => return Err(stalled(url, self.stall)),
            };
            if body.len() + chunk.len() > limit {
                return Err(Error::Registry(format!(
                    "{} sent more than {limit} bytes for {}",
                    host_port(url),
                    url.path()
                )));
            }
            body.extend_from_slice(&chunk);
        }
    }
}

/// The error for a stalled transfer.
pub fn stalled(url: &Url, stall: Duration) -> Error {
    Error::Registry(format!(
        "the download from {} stalled: no data for {} (it resumes at the next pull)",
        host_port(url),
        humantime::format_duration(stall)
    ))
}

/// The innermost cause of an error, as one line of at most 200 characters: what happened
/// (refused, reset, closed mid-body, certificate, ...), where reqwest's own text says only
/// which step failed.
pub fn innermost_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    one_line(&cause.to_string(), 200)
}

/// A transport failure as one line.
pub fn network_error(e: &reqwest::Error, url: &Url) -> Error {
    let host = host_port(url);
    let detail = innermost_cause(e);
    if e.is_redirect() {
        return Error::Registry(format!("{host}: {detail}"));
    }
    if e.is_connect() {
        return Error::Registry(format!("cannot connect to {host}: {detail}"));
    }
    if e.is_timeout() {
        return Error::Registry(format!("{host} timed out: {detail}"));
    }
    Error::Registry(format!("transfer from {host} failed: {detail}"))
}

/// The error for an unexpected HTTP status, with the registry's own message when it sent a JSON
/// one (HTML pages are not echoed).
pub fn status_error(status: StatusCode, url: &Url, what: &str, body: &[u8]) -> Error {
    let host = host_port(url);
    let detail = registry_message(body).map(|m| format!(": {m}")).unwrap_or_default();
    let code = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
    let code = code.trim_end();
    match status.as_u16() {
        401 => Error::Registry(format!(
            "{host} wants credentials for {what} ({code}){detail}; for gated Hugging Face models set store.hf_token or HF_TOKEN"
        )),
        403 => Error::Registry(format!("{host} refused access to {what} ({code}){detail}")),
        404 => Error::NotFound(format!("{what} was not found at {host} ({code}){detail}")),
        429 => Error::Registry(format!("{host} is rate limiting ({code}){detail}; retry later")),
        500..=599 => Error::Registry(format!("{host} failed serving {what} ({code}){detail}; retry later")),
        _ => Error::Registry(format!("{host} answered {code} for {what}{detail}")),
    }
}

/// `errors[0].message` (Docker registries) or `error` (Hugging Face) from a JSON error body.
fn registry_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body.get(..body.len().min(64 << 10))?).ok()?;
    let text = value
        .pointer("/errors/0/message")
        .or_else(|| value.get("error"))
        .or_else(|| value.get("message"))?
        .as_str()?;
    Some(one_line(text, 200))
}

/// Text on one line, cut to `max` characters.
pub fn one_line(text: &str, max: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let cut: String = joined.chars().filter(|c| !c.is_control()).take(max).collect();
    if cut.len() < joined.len() { format!("{cut}…") } else { cut }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_needs_insecure_or_a_listed_host() {
        let hosts = vec!["127.0.0.1:5000".to_string()];
        assert!(scheme_allowed(&Url::parse("https://x/").unwrap(), false, &[]));
        assert!(!scheme_allowed(&Url::parse("http://x/").unwrap(), false, &[]));
        assert!(scheme_allowed(&Url::parse("http://x/").unwrap(), true, &[]));
        assert!(scheme_allowed(&Url::parse("http://127.0.0.1:5000/v2").unwrap(), false, &hosts));
        assert!(!scheme_allowed(&Url::parse("http://127.0.0.1:5001/v2").unwrap(), false, &hosts));
        assert!(!scheme_allowed(&Url::parse("file:///etc/passwd").unwrap(), true, &hosts));
    }

    #[test]
    fn status_errors_are_one_line_and_never_echo_html() {
        let url = Url::parse("https://registry.example/v2/library/m/manifests/latest").unwrap();
        let html = b"<html><body>\n<h1>Forbidden</h1>\n<script>evil()</script></body></html>";
        let e = status_error(StatusCode::FORBIDDEN, &url, "model 'm'", html).to_string();
        assert_eq!(e, "registry.example refused access to model 'm' (403 Forbidden)");
        let json = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest\nunknown"}]}"#;
        let e = status_error(StatusCode::NOT_FOUND, &url, "model 'm'", json);
        assert!(matches!(e, Error::NotFound(_)));
        assert!(e.to_string().ends_with("(404 Not Found): manifest unknown"), "{e}");
        let e = status_error(StatusCode::BAD_GATEWAY, &url, "blob x", b"").to_string();
        assert!(e.contains("502") && e.contains("retry later"), "{e}");
    }
}
