//! `[store]`: the model store's settings — limits, who may pull, and how registries are reached.
//! Every key is documented, with its default, in `packaging/hyperllama.toml`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Groups whose members may pull models, besides administrators.
    pub pull_groups: Vec<String>,
    /// Largest total size of the blobs; a pull or create that would pass it is refused before it
    /// starts. "0" means no limit.
    pub max_size: ByteSize,
    /// Space a pull or create must leave free on the state directory's file system.
    pub min_free_space: ByteSize,
    /// Keep blob files that no model refers to when the daemon starts (they are removed
    /// otherwise).
    pub keep_orphans: bool,
    /// Registry host for names that do not name one (`llama3.2` =
    /// `<registry>/library/llama3.2:latest`). Changes take effect on restart.
    pub registry: String,
    /// Where `hf.co/...` and `huggingface.co/...` names are resolved.
    pub hf_endpoint: String,
    /// Hugging Face access token for gated or private repositories (else `HF_TOKEN` from the
    /// daemon's environment, else none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hf_token: Option<String>,
    /// Hosts (`host` or `host:port`) reached over plain http without `--insecure`: local
    /// mirrors and test registries.
    pub insecure_hosts: Vec<String>,
    /// Connections one pull uses at once (blobs, and parts of large blobs).
    pub parallel_downloads: u32,
    /// Blobs larger than this are fetched as ranged parts in parallel.
    pub download_part_size: ByteSize,
    /// A download that receives nothing for this long fails (and resumes at the next pull).
    #[serde(with = "crate::config::duration_text")]
    pub stall_timeout: Duration,
    /// Limit on connecting to a registry.
    #[serde(with = "crate::config::duration_text")]
    pub connect_timeout: Duration,
    /// Retries of a failed part (connection reset, 5xx) before the pull fails.
    pub retries: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            pull_groups: Vec::new(),
            max_size: ByteSize(0),
            min_free_space: ByteSize(1_000_000_000),
            keep_orphans: false,
            registry: "registry.ollama.ai".into(),
            hf_endpoint: "https://huggingface.co".into(),
            hf_token: None,
            insecure_hosts: Vec::new(),
            parallel_downloads: 4,
            download_part_size: ByteSize(100_000_000),
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            retries: 3,
        }
    }
}

impl StoreConfig {
    /// Checks values that parse but cannot work; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: &str| Err((format!("store.{key}"), message.to_string()));
        if !crate::store::name::valid_host(&self.registry) {
            return bad("registry", "must be a host name, optionally with :port");
        }
        if !(self.hf_endpoint.starts_with("https://") || self.hf_endpoint.starts_with("http://"))
            || reqwest::Url::parse(&self.hf_endpoint).is_err()
        {
            return bad("hf_endpoint", "must be an http(s) URL such as \"https://huggingface.co\"");
        }
        if self.parallel_downloads == 0 || self.parallel_downloads > 64 {
            return bad("parallel_downloads", "must be between 1 and 64");
        }
        if self.download_part_size.0 < 1 << 16 {
            return bad("download_part_size", "must be at least 64KiB");
        }
        if self.stall_timeout < Duration::from_millis(100) {
            return bad("stall_timeout", "must be at least 100ms");
        }
        if self.insecure_hosts.iter().any(|h| !crate::store::name::valid_host(h)) {
            return bad("insecure_hosts", "must list host names, optionally with :port");
        }
        Ok(())
    }
}

/// A size in bytes, written in TOML as text: "500GB", "100MiB", "0".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses a size with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB).
    pub fn parse(text: &str) -> Option<ByteSize> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let n: u64 = number.parse().ok()?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" | "k" => 1_000,
            "mb" | "m" => 1_000_000,
            "gb" | "g" => 1_000_000_000,
            "tb" | "t" => 1_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            _ => return None,
        };
        n.checked_mul(scale).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 8] = [
            ("TiB", 1 << 40),
            ("TB", 1_000_000_000_000),
            ("GiB", 1 << 30),
            ("GB", 1_000_000_000),
            ("MiB", 1 << 20),
            ("MB", 1_000_000),
            ("KiB", 1 << 10),
            ("KB", 1_000),
        ];
        let b = self.0;
        match UNITS.iter().find(|(_, scale)| b != 0 && b.is_multiple_of(*scale)) {
            Some((unit, scale)) => write!(f, "{}{unit}", b / scale),
            None => write!(f, "{b}"),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ByteSize::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("`{text}` is not a size like \"500GB\", \"100MiB\" or \"0\""))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(ByteSize::parse("500GB"), Some(ByteSize(500_000_000_000)));
        assert_eq!(ByteSize::parse("100 MiB"), Some(ByteSize(100 << 20)));
        assert_eq!(ByteSize::parse("0"), Some(ByteSize(0)));
        assert_eq!(ByteSize::parse("12"), Some(ByteSize(12)));
        assert_eq!(ByteSize::parse("lots"), None);
        assert_eq!(ByteSize::parse("99999999999TB"), None, "overflow is refused");
        for text in ["1GB", "100MB", "64KiB", "0", "1234"] {
            assert_eq!(ByteSize::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        assert!(StoreConfig::default().validate().is_ok());
        let mut c = StoreConfig { registry: "evil/../host".into(), ..StoreConfig::default() };
        assert_eq!(c.validate().unwrap_err().0, "store.registry");
        c = StoreConfig { parallel_downloads: 0, ..StoreConfig::default() };
        assert_eq!(c.validate().unwrap_err().0, "store.parallel_downloads");
        c = StoreConfig { hf_endpoint: "ftp://x".into(), ..StoreConfig::default() };
        assert_eq!(c.validate().unwrap_err().0, "store.hf_endpoint");
    }
}
