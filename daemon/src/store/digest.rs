//! [`Digest`]: a sha256 content address, the only way a digest becomes a file name. It holds the
//! 32 bytes, not the text it was parsed from, so a path built from it is always
//! `sha256-<64 lowercase hex>` whatever a registry or a client sent (Ollama CVE-2024-37032, where
//! `sha256:../../x` named a path outside the store).

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// A sha256 digest, written `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a text is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {shown}: expected \"sha256:\" and 64 lowercase hex digits")]
pub struct DigestError {
    shown: String,
}

impl DigestError {
    fn new(text: &str) -> Self {
        let mut shown: String = text.chars().take(80).collect();
        if shown.len() < text.len() {
            shown.push('…');
        }
        Self { shown: format!("{shown:?}") }
    }
}

const PREFIX: &str = "sha256:";
const FILE_PREFIX: &str = "sha256-";

impl Digest {
    /// Parses exactly `^sha256:[0-9a-f]{64}$`.
    pub fn parse(text: &str) -> Result<Digest, DigestError> {
        let hex = text.strip_prefix(PREFIX).ok_or_else(|| DigestError::new(text))?;
        Self::from_hex(hex).ok_or_else(|| DigestError::new(text))
    }

    /// Parses a blob file name, `sha256-<64 lowercase hex>`; anything else is `None`.
    pub fn from_file_name(name: &str) -> Option<Digest> {
        Self::from_hex(name.strip_prefix(FILE_PREFIX)?)
    }

    fn from_hex(hex: &str) -> Option<Digest> {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex, &mut bytes).ok()?;
        Some(Digest(bytes))
    }

    /// The digest of a finished hash.
    pub fn from_hasher(hasher: Sha256) -> Digest {
        Digest(hasher.finalize().into())
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, as Ollama shows layer and model ids.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }

    /// `sha256-<hex>`: the blob's file name.
    pub fn file_name(&self) -> String {
        format!("{FILE_PREFIX}{}", self.hex())
    }

    /// The blob's path inside `blobs_dir`.
    pub fn blob_path(&self, blobs_dir: &Path) -> PathBuf {
        blobs_dir.join(self.file_name())
    }

    /// A staging file for this blob inside `staging_dir`, e.g. `sha256-<hex>.partial`.
    pub fn staging_path(&self, staging_dir: &Path, suffix: &str) -> PathBuf {
        debug_assert!(suffix.chars().all(|c| c.is_ascii_alphanumeric()));
        staging_dir.join(format!("{}.{suffix}", self.file_name()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

    #[test]
    fn parses_and_prints_canonically() {
        let d = Digest::parse(GOOD).unwrap();
        assert_eq!(d.to_string(), GOOD);
        assert_eq!(d.short(), "a5fd3b62230a");
        assert_eq!(d.blob_path(Path::new("/s/blobs")), Path::new(&format!("/s/blobs/sha256-{}", &GOOD[7..])));
        assert_eq!(Digest::from_file_name(&d.file_name()), Some(d));
    }

    #[test]
    fn hostile_digests_are_refused() {
        for bad in [
            "sha256:../../x",
            "sha256:../../../../etc/passwd",
            "sha256-a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            "sha256:A5FD3B62230AA5EC60212297DC9D20EAA70578AC519E00D93A17E44C087A6818",
            "sha512:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            "sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a681",
            "sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a68188",
            "sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a681/",
            " sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            "",
        ] {
            let err = Digest::parse(bad).unwrap_err().to_string();
            assert!(!err.contains('\n'), "{err}");
        }
        let long = format!("sha256:{}", "/..".repeat(1000));
        assert!(Digest::parse(&long).unwrap_err().to_string().len() < 200, "errors stay short");
    }

    /// Property: for any text, parsing succeeds exactly when it matches `^sha256:[0-9a-f]{64}$`,
    /// and then the blob path is a direct child of the blobs directory named after the hex.
    #[test]
    fn property_only_canonical_text_becomes_a_path() {
        let alphabet: Vec<char> = "0123456789abcdefABCDEF:/.\\-sha256 \0\u{e9}".chars().collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let blobs = Path::new("/state/blobs");
        for round in 0..20_000 {
            let text = if round % 3 == 0 {
                // Near misses: a valid digest with one character replaced, inserted or removed.
                let mut chars: Vec<char> = GOOD.chars().collect();
                let at = usize::try_from(next() % chars.len() as u64).unwrap();
                let c = alphabet[usize::try_from(next() % alphabet.len() as u64).unwrap()];
                match next() % 3 {
                    0 => chars[at] = c,
                    1 => chars.insert(at, c),
                    _ => {
                        chars.remove(at);
                    }
                }
                chars.into_iter().collect::<String>()
            } else {
                let len = usize::try_from(next() % 80).unwrap();
                let body: String = (0..len)
                    .map(|_| alphabet[usize::try_from(next() % alphabet.len() as u64).unwrap()])
                    .collect();
                if round % 3 == 1 { format!("sha256:{body}") } else { body }
            };
            let canonical = text.len() == 71
                && text.starts_with("sha256:")
                && text[7..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            match Digest::parse(&text) {
                Ok(d) => {
                    assert!(canonical, "accepted {text:?}");
                    let path = d.blob_path(blobs);
                    assert_eq!(path.parent(), Some(blobs));
                    assert_eq!(path.file_name().unwrap().to_str().unwrap(), format!("sha256-{}", &text[7..]));
                }
                Err(_) => assert!(!canonical, "refused {text:?}"),
            }
        }
    }

    #[test]
    fn serde_refuses_evil_digests() {
        let err = serde_json::from_str::<Digest>("\"sha256:../../x\"").unwrap_err().to_string();
        assert!(err.contains("invalid digest"), "{err}");
        let d: Digest = serde_json::from_str(&format!("\"{GOOD}\"")).unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{GOOD}\""));
    }
}
