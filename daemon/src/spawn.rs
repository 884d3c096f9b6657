//! Starting child processes that carry a parent-death signal (engine servers, model runners).
//! Linux sends that signal when the *thread* that forked the child ends, not the process; tokio
//! forks on whichever thread polls the spawn, and blocking-pool threads end after 10 idle
//! seconds. So every such child is forked on one thread that lives as long as the process.

use std::sync::mpsc::{Sender, SyncSender};
use std::sync::{Mutex, OnceLock};

use tokio::process::{Child, Command};

type Job = (Command, tokio::runtime::Handle, SyncSender<std::io::Result<Child>>);

/// Spawns `command` (inside the caller's tokio runtime) from the process-lifetime spawner thread.
pub fn from_lasting_thread(command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<std::io::Result<Mutex<Sender<Job>>>> = OnceLock::new();
    let gone = || std::io::Error::other("the spawning thread is gone");
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new().name("hl-spawner".into()).spawn(move || {
            for (mut command, runtime, reply) in rx {
                // tokio registers the child (its exit, its pipes) with the caller's runtime.
                let _entered = runtime.enter();
                let _ = reply.send(command.spawn());
            }
        })?;
        Ok(Mutex::new(tx))
    });
    let spawner = spawner.as_ref().map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
    let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
    let job = (command, tokio::runtime::Handle::current(), reply_tx);
    spawner.lock().unwrap_or_else(|e| e.into_inner()).send(job).map_err(|_| gone())?;
    reply_rx.recv().map_err(|_| gone())?
}
