//! One download per blob, however many pulls want it: the first pull of a digest starts a
//! [`Flight`]; later pulls of the same digest join it and watch the same progress. A flight is
//! cancelled when the last pull watching it goes away (the client left, or the daemon's drain
//! timed out); its staging file stays for the next pull to resume. A new flight for a digest
//! whose previous flight is still winding down waits for it, so two writers never share a
//! staging file.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::digest::Digest;
use crate::error::Error;

/// A flight's progress and, once it ended, its outcome.
#[derive(Debug, Clone, Default)]
pub struct FlightState {
    /// Bytes downloaded.
    pub completed: u64,
    /// Bytes in all.
    pub total: u64,
    /// `Some` once finished.
    pub outcome: Option<Result<(), Arc<Error>>>,
}

/// What the download task gets: where to report, and when to stop.
#[derive(Debug, Clone)]
pub struct FlightHandle {
    /// Progress (`completed`); the outcome is set by [`Downloads`].
    pub progress: watch::Sender<FlightState>,
    /// Fires when no pull wants the blob any more.
    pub cancel: CancellationToken,
}

#[derive(Debug)]
struct Flight {
    state: watch::Sender<FlightState>,
    cancel: CancellationToken,
    interest: AtomicUsize,
}

/// A pull's interest in a flight; dropping the last one cancels the flight.
#[derive(Debug)]
pub struct Ticket {
    flight: Arc<Flight>,
    /// The flight's state.
    pub state: watch::Receiver<FlightState>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.flight.interest.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.flight.cancel.cancel();
        }
    }
}

impl Ticket {
    /// Waits for the flight's outcome.
    pub async fn finished(&mut self) -> Result<(), Error> {
        let state = self.state.wait_for(|s| s.outcome.is_some()).await;
        match state.as_deref().map(|s| s.outcome.clone()) {
            Ok(Some(Ok(()))) => Ok(()),
            Ok(Some(Err(e))) => Err(duplicate(&e)),
            _ => Err(Error::Internal("a download ended without an outcome".into())),
        }
    }
}

/// The flights in progress.
#[derive(Debug, Default)]
pub struct Downloads {
    flights: Mutex<HashMap<Digest, Arc<Flight>>>,
}

impl Downloads {
    /// Joins the flight for `digest`, or starts one by spawning `download(handle)`.
    pub fn join_or_start<F, Fut>(self: &Arc<Self>, digest: Digest, total: u64, download: F) -> Ticket
    where
        F: FnOnce(FlightHandle) -> Fut,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        let previous = match flights.get(&digest) {
            Some(f) if !f.cancel.is_cancelled() => {
                f.interest.fetch_add(1, Ordering::SeqCst);
                return Ticket { flight: Arc::clone(f), state: f.state.subscribe() };
            }
            Some(f) => Some(f.state.subscribe()),
            None => None,
        };
        let (state, rx) = watch::channel(FlightState { total, ..FlightState::default() });
        let flight =
            Arc::new(Flight { state, cancel: CancellationToken::new(), interest: AtomicUsize::new(1) });
        flights.insert(digest, Arc::clone(&flight));
        drop(flights);
        let handle = FlightHandle { progress: flight.state.clone(), cancel: flight.cancel.clone() };
        let work = download(handle);
        let downloads = Arc::clone(self);
        let task_flight = Arc::clone(&flight);
        tokio::spawn(async move {
            if let Some(mut previous) = previous {
                // The cancelled flight may still be writing the staging file.
                let _ = previous.wait_for(|s| s.outcome.is_some()).await;
            }
            let outcome = if task_flight.cancel.is_cancelled() {
                Err(Error::Registry("download cancelled".into()))
            } else {
                work.await
            };
            let mut flights = downloads.flights.lock().unwrap_or_else(|e| e.into_inner());
            if flights.get(&digest).is_some_and(|f| Arc::ptr_eq(f, &task_flight)) {
                flights.remove(&digest);
            }
            task_flight.state.send_modify(|s| s.outcome = Some(outcome.map_err(Arc::new)));
        });
        Ticket { flight, state: rx }
    }

    /// Flights running now.
    pub fn active(&self) -> usize {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A copy of a shared error for each pull that waited on it.
pub fn duplicate(e: &Error) -> Error {
    match e {
        Error::NotFound(m) => Error::NotFound(m.clone()),
        Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
        Error::InvalidModel(m) => Error::InvalidModel(m.clone()),
        Error::Registry(m) => Error::Registry(m.clone()),
        Error::StoreFull(m) => Error::StoreFull(m.clone()),
        Error::ShuttingDown => Error::ShuttingDown,
        other => Error::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_pulls_share_one_flight() {
        let downloads = Arc::new(Downloads::default());
        let starts = Arc::new(AtomicUsize::new(0));
        let d = Digest::of(b"x");
        let start = |starts: Arc<AtomicUsize>| {
            move |h: FlightHandle| async move {
                starts.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                h.progress.send_modify(|s| s.completed = 10);
                Ok(())
            }
        };
        let mut a = downloads.join_or_start(d, 10, start(Arc::clone(&starts)));
        let mut b = downloads.join_or_start(d, 10, start(Arc::clone(&starts)));
        a.finished().await.unwrap();
        b.finished().await.unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert_eq!(b.state.borrow().completed, 10);
        assert_eq!(downloads.active(), 0);
    }

    #[tokio::test]
    async fn last_ticket_dropped_cancels_and_a_new_flight_waits_for_the_old() {
        let downloads = Arc::new(Downloads::default());
        let d = Digest::of(b"y");
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (wound_down_tx, wound_down) = tokio::sync::oneshot::channel();
        let first = downloads.join_or_start(d, 1, move |h: FlightHandle| async move {
            let _ = started_tx.send(());
            h.cancel.cancelled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = wound_down_tx.send(std::time::Instant::now());
            Err(Error::Registry("cancelled".into()))
        });
        started.await.unwrap();
        drop(first);
        let second_ran = Arc::new(Mutex::new(None));
        let mark = Arc::clone(&second_ran);
        let mut second = downloads.join_or_start(d, 1, move |_h| async move {
            *mark.lock().unwrap() = Some(std::time::Instant::now());
            Ok(())
        });
        second.finished().await.unwrap();
        let wound_down_at = wound_down.await.unwrap();
        let second_at = second_ran.lock().unwrap().expect("the second flight ran");
        assert!(second_at >= wound_down_at, "the second flight ran only after the first wound down");
    }

    #[tokio::test]
    async fn errors_reach_every_waiter() {
        let downloads = Arc::new(Downloads::default());
        let d = Digest::of(b"z");
        let mut a = downloads.join_or_start(d, 1, |_h| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(Error::InvalidModel("sha256 mismatch".into()))
        });
        let mut b = downloads.join_or_start(d, 1, |_h| async { Ok(()) });
        assert!(a.finished().await.unwrap_err().to_string().contains("mismatch"));
        assert!(b.finished().await.unwrap_err().to_string().contains("mismatch"));
    }
}
