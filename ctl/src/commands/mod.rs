//! One module per group of commands; each takes a connected client and returns its output.

pub mod admin;
pub mod create;
pub mod models;
pub mod run;
pub mod serve;
pub mod status;

/// Parses Ollama-style keep-alive text ("5m", "1h", "-1", "0", "300") into seconds.
pub fn keep_alive_seconds(text: &str) -> Result<i64, crate::error::CtlError> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Ok(n);
    }
    if let Some(rest) = t.strip_prefix('-') {
        return humantime::parse_duration(rest)
            .map(|_| -1)
            .map_err(|_| crate::error::CtlError::Usage(format!("invalid keepalive `{text}`")));
    }
    humantime::parse_duration(t).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).map_err(|_| {
        crate::error::CtlError::Usage(format!("invalid keepalive `{text}` (e.g. 5m, 1h, -1, 0)"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_forms() {
        assert_eq!(keep_alive_seconds("5m").unwrap(), 300);
        assert_eq!(keep_alive_seconds("-1").unwrap(), -1);
        assert_eq!(keep_alive_seconds("-1m").unwrap(), -1);
        assert_eq!(keep_alive_seconds("0").unwrap(), 0);
        assert!(keep_alive_seconds("soon").is_err());
    }
}
