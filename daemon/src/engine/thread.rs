//! The dedicated thread of an in-process engine (llama.cpp, native): started with a command
//! channel and a ready handshake, fed commands from any thread, and on drop closed (its loop
//! ends after the current step) and joined, so what the thread owns (a llama.cpp context,
//! device memory) is freed before the engine handle is gone.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use super::EngineError;

/// What an engine thread's body gets: its command queue and where to report being ready.
pub type ThreadChannels<C, R> = (Receiver<C>, SyncSender<Result<R, EngineError>>);

/// A running engine thread taking commands of type `C`.
#[derive(Debug)]
pub struct EngineThread<C> {
    commands: Mutex<Option<Sender<C>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<C: Send + 'static> EngineThread<C> {
    /// Starts `body` on a thread named `name` and waits until it reports ready (its value) or
    /// failed (its error, after the thread ended).
    pub fn start<R: Send + 'static>(
        name: &str,
        body: impl FnOnce(ThreadChannels<C, R>) + Send + 'static,
    ) -> Result<(EngineThread<C>, R), EngineError> {
        let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body((cmd_rx, ready_tx)))
            .map_err(|e| EngineError::Load(format!("cannot start the engine thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(ready)) => {
                let handle =
                    EngineThread { commands: Mutex::new(Some(cmd_tx)), thread: Mutex::new(Some(thread)) };
                Ok((handle, ready))
            }
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(EngineError::Load("the engine thread died while starting".into()))
            }
        }
    }

    /// Queues a command; `Stopped` once the thread is gone.
    pub fn send(&self, command: C) -> Result<(), EngineError> {
        let guard = self.commands.lock().map_err(|_| EngineError::Stopped)?;
        guard.as_ref().ok_or(EngineError::Stopped)?.send(command).map_err(|_| EngineError::Stopped)
    }
}

impl<C> Drop for EngineThread<C> {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.commands.lock() {
            guard.take();
        }
        if let Ok(mut guard) = self.thread.lock()
            && let Some(thread) = guard.take()
        {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_reach_the_thread_and_drop_joins_it() {
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let (thread, ready) = EngineThread::start("test-engine", move |(commands, ready)| {
            ready.send(Ok(7u32)).unwrap();
            for c in commands {
                seen_tx.send(c).unwrap();
            }
            // Runs only after the command channel closed, i.e. on drop.
            seen_tx.send(0).unwrap();
        })
        .unwrap();
        assert_eq!(ready, 7);
        thread.send(1).unwrap();
        thread.send(2).unwrap();
        drop(thread);
        // Joined: everything the thread sent is there, the closing marker last.
        assert_eq!(seen_rx.try_iter().collect::<Vec<u32>>(), vec![1, 2, 0]);
    }

    #[test]
    fn a_failed_start_reports_the_error_or_the_death() {
        let failed = EngineThread::<u32>::start("test-engine", |(_, ready)| {
            ready.send(Err::<(), _>(EngineError::Load("no model".into()))).unwrap();
        });
        assert!(matches!(failed, Err(EngineError::Load(m)) if m == "no model"));
        let died = EngineThread::<u32>::start::<()>("test-engine", |_| {});
        assert!(matches!(died, Err(EngineError::Load(m)) if m.contains("died while starting")));
    }
}
