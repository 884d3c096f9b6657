//! Human output: sizes, relative times and aligned tables as Ollama prints them.

/// Bytes as Ollama shows them ("2.0 GB", "815 MB").
pub fn size(bytes: u64) -> String {
    const UNITS: [(&str, f64); 4] = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)];
    #[allow(clippy::cast_precision_loss)]
    let b = bytes as f64;
    for (unit, scale) in UNITS {
        if b >= scale {
            let v = b / scale;
            return if v >= 100.0 { format!("{v:.0} {unit}") } else { format!("{v:.1} {unit}") };
        }
    }
    format!("{bytes} B")
}

/// Bytes in binary units, for page sizes ("2 MiB", "1 GiB").
pub fn binary_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// A Unix time relative to now ("4 minutes ago", "About an hour from now").
pub fn relative(unix: i64, now: i64) -> String {
    let delta = now - unix;
    let (secs, suffix) = if delta >= 0 { (delta, "ago") } else { (-delta, "from now") };
    let text = match secs {
        0..=1 => {
            return if delta >= 0 {
                "Less than a second ago".into()
            } else {
                "Less than a second from now".into()
            };
        }
        2..=59 => format!("{secs} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", secs / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", secs / 3600),
        172_800..=1_209_599 => format!("{} days", secs / 86_400),
        1_209_600..=5_183_999 => format!("{} weeks", secs / 604_800),
        _ => format!("{} months", secs / 2_592_000),
    };
    format!("{text} {suffix}")
}

/// Current Unix time.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Prints rows under headers, columns separated by at least three spaces (Ollama's layout).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}    ", w = *w));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ollama() {
        assert_eq!(size(253_113_024), "253 MB");
        assert_eq!(size(2_019_393_189), "2.0 GB");
        assert_eq!(size(512), "512 B");
    }

    #[test]
    fn relative_times() {
        assert_eq!(relative(1000 - 240, 1000), "4 minutes ago");
        assert_eq!(relative(1000 + 3700, 1000), "About an hour from now");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["NAME", "ID"], &[vec!["gemma3:270m".into(), "abc".into()]]);
        assert_eq!(t, "NAME           ID\ngemma3:270m    abc\n");
    }
}
