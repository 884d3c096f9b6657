//! The Docker registry bearer-token challenge: a 401 with `WWW-Authenticate: Bearer
//! realm="…",service="…",scope="…"` is answered by fetching a token from the realm and retrying
//! with `Authorization: Bearer <token>`. Tokens are kept for the rest of the pull, per origin.

use std::collections::HashMap;
use std::sync::Mutex;

use reqwest::header::{HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode, Url};

use super::{Http, host_port, one_line};
use crate::error::{Error, Result};

/// A parsed `WWW-Authenticate: Bearer` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Where to get a token.
    pub realm: String,
    /// `service` parameter.
    pub service: Option<String>,
    /// `scope` parameter.
    pub scope: Option<String>,
}

impl Challenge {
    /// The Bearer challenge of a 401 response, if it has one.
    pub fn from_response(response: &Response) -> Option<Challenge> {
        response
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(Self::parse)
    }

    /// Parses `Bearer realm="…",service="…",scope="…"`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let rest = header.trim();
        let (scheme, params) = rest.split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut fields: HashMap<String, String> = HashMap::new();
        let mut chars = params.trim().chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let key: String =
                chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_ascii_lowercase();
            if key.is_empty() {
                break;
            }
            let value = if chars.peek() == Some(&'"') {
                chars.next();
                let mut v = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => v.extend(chars.next()),
                        '"' => break,
                        other => v.push(other),
                    }
                }
                v
            } else {
                chars.by_ref().take_while(|c| *c != ',').collect::<String>().trim().to_string()
            };
            fields.insert(key, value);
        }
        Some(Challenge {
            realm: fields.remove("realm")?,
            service: fields.remove("service"),
            scope: fields.remove("scope"),
        })
    }
}

/// Tokens obtained during one pull, by origin.
#[derive(Debug, Default)]
pub struct Tokens {
    by_origin: Mutex<HashMap<String, HeaderValue>>,
}

impl Tokens {
    /// A token already obtained for `url`'s origin.
    pub fn cached(&self, url: &Url) -> Option<HeaderValue> {
        self.by_origin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&url.origin().ascii_serialization())
            .cloned()
    }

    /// Answers `challenge` (received from `url`) and remembers the token for `url`'s origin.
    pub async fn fetch(&self, http: &Http, url: &Url, challenge: &Challenge) -> Result<HeaderValue> {
        let mut realm = Url::parse(&challenge.realm).map_err(|_| {
            Error::Registry(format!(
                "{} sent an unusable token realm {:?}",
                host_port(url),
                one_line(&challenge.realm, 100)
            ))
        })?;
        http.check_url(&realm)?;
        {
            let mut query = realm.query_pairs_mut();
            if let Some(service) = &challenge.service {
                query.append_pair("service", service);
            }
            if let Some(scope) = &challenge.scope {
                query.append_pair("scope", scope);
            }
        }
        let response = http.send(http.client.get(realm.clone()), &realm).await?;
        let status = response.status();
        let body = http.small_body(response, 64 << 10, &realm).await?;
        if status != StatusCode::OK {
            return Err(super::status_error(status, &realm, "an access token", &body));
        }
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| Error::Registry(format!("{} sent a token that is not JSON", host_port(&realm))))?;
        let token = json
            .get("token")
            .or_else(|| json.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| Error::Registry(format!("{} sent no token", host_port(&realm))))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            Error::Registry(format!("{} sent a token that is not a header value", host_port(&realm)))
        })?;
        value.set_sensitive(true);
        self.by_origin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(url.origin().ascii_serialization(), value.clone());
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:library/m:pull""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.example/token");
        assert_eq!(c.service.as_deref(), Some("registry.example"));
        assert_eq!(c.scope.as_deref(), Some("repository:library/m:pull"));
        assert!(Challenge::parse(r#"Basic realm="x""#).is_none());
        assert!(Challenge::parse("Bearer service=x").is_none(), "a realm is required");
        let c = Challenge::parse(r#"bearer realm=https://a/t, scope="a,b""#).unwrap();
        assert_eq!((c.realm.as_str(), c.scope.as_deref()), ("https://a/t", Some("a,b")));
    }
}
