//! `hyperctl serve`: runs hyperllamad in user mode in the foreground, as `ollama serve` users expect.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use crate::error::{CtlError, Result};

/// Finds hyperllamad: next to this binary, then the packaged path, then PATH.
fn daemon_binary() -> Option<PathBuf> {
    let beside = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("hyperllamad")));
    let candidates = beside.into_iter().chain([PathBuf::from("/usr/sbin/hyperllamad")]).chain(
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join("hyperllamad")).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    candidates.into_iter().find(|p| p.is_file())
}

/// Replaces this process with `hyperllamad --mode user ARGS`.
pub fn serve(args: &[String]) -> Result<()> {
    let binary = daemon_binary().ok_or_else(|| {
        CtlError::Usage("hyperllamad not found next to hyperctl, in /usr/sbin or on PATH".into())
    })?;
    let mut command = std::process::Command::new(&binary);
    if !args.iter().any(|a| a == "--mode" || a.starts_with("--mode=")) {
        command.args(["--mode", "user"]);
    }
    let error = command.args(args).exec();
    Err(CtlError::File { path: binary, message: format!("cannot start: {error}") })
}
