//! The Ollama registry protocol (Docker registry v2): `GET /v2/<ns>/<model>/manifests/<tag>`
//! for the manifest and `GET /v2/<ns>/<model>/blobs/<digest>` for each blob, which may redirect
//! to another host. Plain http is used for `--insecure` pulls and `store.insecure_hosts`.

use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};

use super::Http;
use crate::error::{Error, Result};
use crate::store::digest::Digest;
use crate::store::manifest::{MANIFEST_V2, MAX_MANIFEST_BYTES, Manifest};
use crate::store::name::ModelName;

/// The registry's base URL for a name: https, or http when plain http is allowed for its host.
pub fn base_url(http: &Http, name: &ModelName) -> Result<Url> {
    let https = Url::parse(&format!("https://{}/", name.host))
        .map_err(|_| Error::InvalidArgument(format!("{} is not a registry host", name.host)))?;
    let plain = Url::parse(&format!("http://{}/", name.host))
        .map_err(|_| Error::InvalidArgument(format!("{} is not a registry host", name.host)))?;
    Ok(if http.insecure || http.check_url(&plain).is_ok() { plain } else { https })
}

/// Where a blob of `name`'s repository is.
pub fn blob_url(base: &Url, name: &ModelName, digest: &Digest) -> Result<Url> {
    base.join(&format!("v2/{}/{}/blobs/{digest}", name.namespace, name.model))
        .map_err(|e| Error::Internal(format!("blob URL: {e}")))
}

/// Fetches and checks the manifest of `name`; returns its bytes and the parsed manifest.
pub async fn fetch_manifest(
    http: &Http,
    base: &Url,
    name: &ModelName,
    shown: &str,
) -> Result<(Vec<u8>, Manifest)> {
    let url = base
        .join(&format!("v2/{}/{}/manifests/{}", name.namespace, name.model, name.tag))
        .map_err(|e| Error::Internal(format!("manifest URL: {e}")))?;
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_V2));
    let response = http.get(&url, headers).await?;
    let status = response.status();
    let body = http.small_body(response, MAX_MANIFEST_BYTES, &url).await?;
    if status != StatusCode::OK {
        let what = format!("model '{shown}'");
        return Err(match super::status_error(status, &url, &what, &body) {
            Error::NotFound(_) => Error::NotFound(format!(
                "model '{shown}' not found at {}; check the name (and tag) or pull another",
                name.host
            )),
            other => other,
        });
    }
    let manifest = Manifest::parse(&body, &format!("'{shown}'"))?;
    Ok((body, manifest))
}
