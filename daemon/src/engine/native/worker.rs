//! The native engine's thread: it owns the [`EngineCore`] (and through it the device executor,
//! created on this thread so its CUDA context lives here), and runs vLLM's loop:
//! intake → cancellations → one core step → text out. Cancellation (a dropped receiver) and stop
//! strings take effect between steps, so within one step. Events go through a per-request
//! outbox so a slow client never blocks the engine.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyperllama_native::core::engine::{CoreConfig, EngineCore, SeqEvent};
use hyperllama_native::core::executor::{ExecError, Executor, SeqId};
use hyperllama_native::core::sequence::{FinishReason as CoreFinish, SeqRequest};
use tokio::sync::mpsc;

use super::vocab::Vocabulary;
use crate::engine::outbox::Outbox;
use crate::engine::stop::{StopMatcher, StopOutcome, Utf8Stream};
use crate::engine::{EngineError, EngineEvent, FinishReason, RequestStats};

/// Makes the executor, on the engine thread.
pub(super) type ExecutorFactory = Box<dyn FnOnce() -> Result<Box<dyn Executor>, ExecError> + Send>;

/// A request for the engine thread.
pub(super) struct Job {
    pub request: SeqRequest,
    pub stop: Vec<String>,
    pub tx: mpsc::Sender<EngineEvent>,
}

/// What the thread reports once the executor is loaded.
pub(super) struct Ready {
    pub max_len: usize,
    pub parallel: usize,
    pub weights_bytes: u64,
    pub kv_bytes: u64,
    pub vocab_size: usize,
}

/// Live counters, shared with the handle.
#[derive(Debug, Default)]
pub(super) struct SharedStats {
    pub active: AtomicUsize,
    pub steps: AtomicU64,
    pub tokens_fed: AtomicU64,
    pub tokens_generated: AtomicU64,
    pub preemptions: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cached_tokens: AtomicU64,
}

/// One request's text pipeline and timings.
struct Live {
    out: Outbox,
    utf8: Utf8Stream,
    stop: StopMatcher,
    piece: Vec<u8>,
    prompt_tokens: u32,
    cached_tokens: u32,
    admitted: Instant,
    first_at: Option<Instant>,
    generated: u32,
    logprob_acc: Option<f32>,
    finished: bool,
}

impl Live {
    fn stats(&self) -> RequestStats {
        let now = Instant::now();
        let first = self.first_at.unwrap_or(now);
        RequestStats {
            prompt_tokens: self.prompt_tokens,
            cached_tokens: self.cached_tokens,
            prompt_eval_ns: nanos(first - self.admitted),
            generated_tokens: self.generated,
            eval_ns: nanos(now - first),
        }
    }

    /// Sends released text, carrying the log-probabilities of the tokens it holds.
    fn emit_text(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        let logprob = self.logprob_acc.take();
        self.out.push(EngineEvent::Text { text, logprob });
    }

    fn finish(&mut self, reason: FinishReason) {
        if self.finished {
            return;
        }
        let mut tail = String::new();
        self.utf8.finish(&mut tail);
        let mut reason = reason;
        match self.stop.push(&tail) {
            StopOutcome::Continue(text) => {
                self.emit_text(text);
                let rest = self.stop.finish();
                self.emit_text(rest);
            }
            StopOutcome::Stopped(text) => {
                self.emit_text(text);
                reason = FinishReason::Stop;
            }
        }
        let stats = self.stats();
        self.out.push(EngineEvent::Done { reason, stats });
        self.finished = true;
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs the engine until the command channel closes.
pub(super) fn run(
    factory: ExecutorFactory,
    config: CoreConfig,
    vocab: Arc<dyn Vocabulary>,
    commands: std::sync::mpsc::Receiver<Job>,
    stats: Arc<SharedStats>,
    ready: std::sync::mpsc::SyncSender<Result<Ready, EngineError>>,
) {
    let executor = match factory() {
        Ok(e) => e,
        Err(e) => {
            let _ = ready.send(Err(EngineError::Load(e.to_string())));
            return;
        }
    };
    let shape = executor.model_shape().clone();
    let layout = executor.kv_layout();
    if shape.vocab_size < vocab.n_tokens() {
        let _ = ready.send(Err(EngineError::Load(format!(
            "the model has {} logits but its vocabulary {} tokens",
            shape.vocab_size,
            vocab.n_tokens()
        ))));
        return;
    }
    let mut core = EngineCore::new(executor, config);
    let _ = ready.send(Ok(Ready {
        max_len: core.max_len(),
        parallel: core.scheduler().config().max_step_sequences,
        weights_bytes: shape.weights_bytes,
        kv_bytes: layout.bytes_per_block * layout.num_gpu_blocks as u64,
        vocab_size: shape.vocab_size,
    }));
    let mut lives: HashMap<SeqId, Live> = HashMap::new();
    let mut open = true;
    loop {
        // Intake: block only when there is nothing else to do.
        let idle = !core.has_work() && lives.values().all(|l| l.out.is_empty());
        if idle && open {
            match commands.recv() {
                Ok(job) => admit(&mut core, &mut lives, job),
                Err(_) => open = false,
            }
        }
        loop {
            match commands.try_recv() {
                Ok(job) => admit(&mut core, &mut lives, job),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if !open {
            // The handle is gone: nobody can read the events any more.
            for (id, _) in lives.drain() {
                core.abort(id);
            }
            return;
        }
        // Cancellations: a dropped receiver frees the sequence's blocks now.
        lives.retain(|&id, live| {
            if live.out.is_closed() {
                core.abort(id);
                false
            } else {
                true
            }
        });
        if core.has_work() {
            for event in core.step() {
                handle(&mut core, &mut lives, vocab.as_ref(), event);
            }
            let c = core.counters();
            let sc = core.scheduler().counters();
            stats.steps.store(c.steps, Ordering::Relaxed);
            stats.tokens_fed.store(c.tokens_fed, Ordering::Relaxed);
            stats.tokens_generated.store(c.tokens_generated, Ordering::Relaxed);
            stats.preemptions.store(sc.recomputed + sc.swapped_out, Ordering::Relaxed);
            stats.cached_tokens.store(sc.cached_tokens, Ordering::Relaxed);
            stats.cache_hits.store(core.scheduler().cache_counters().hits, Ordering::Relaxed);
        }
        for live in lives.values_mut() {
            live.out.flush();
        }
        if let Some(failure) = core.device_failure() {
            // Every request was told (Failed → Error events, flushed above). The device may be
            // unusable (sticky CUDA errors): end the runner so its supervisor starts a fresh one
            // (runners abort on any thread's panic).
            tracing::error!("native engine: device failure, the runner restarts: {failure}");
            panic!("native engine: device failure: {failure}");
        }
        // Finished and delivered (a closed channel empties its outbox on flush); live requests
        // whose client left are aborted by the cancellation pass of the next iteration.
        lives.retain(|_, l| !(l.finished && l.out.is_empty()));
        stats.active.store(core.scheduler().num_seqs(), Ordering::Relaxed);
        if !core.has_work() && !lives.is_empty() {
            // Only slow readers left: wait for them without spinning.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn admit(core: &mut EngineCore, lives: &mut HashMap<SeqId, Live>, job: Job) {
    let id = job.request.id;
    let prompt_tokens = u32::try_from(job.request.prompt.len()).unwrap_or(u32::MAX);
    let mut out = Outbox::new(job.tx);
    if let Err(e) = core.add(job.request) {
        out.push(EngineEvent::Error(e.to_string()));
        return;
    }
    lives.insert(
        id,
        Live {
            out,
            utf8: Utf8Stream::new(),
            stop: StopMatcher::new(&job.stop),
            piece: Vec::new(),
            prompt_tokens,
            cached_tokens: 0,
            admitted: Instant::now(),
            first_at: None,
            generated: 0,
            logprob_acc: None,
            finished: false,
        },
    );
}

fn handle(core: &mut EngineCore, lives: &mut HashMap<SeqId, Live>, vocab: &dyn Vocabulary, event: SeqEvent) {
    match event {
        SeqEvent::PromptDone { seq, cached_tokens } => {
            if let Some(live) = lives.get_mut(&seq) {
                live.first_at = Some(Instant::now());
                live.cached_tokens = u32::try_from(cached_tokens).unwrap_or(u32::MAX);
                live.out.push(EngineEvent::PromptDone {
                    prompt_tokens: live.prompt_tokens,
                    cached_tokens: live.cached_tokens,
                });
            }
        }
        SeqEvent::Token { seq, token, logprob, stop, .. } => {
            let Some(live) = lives.get_mut(&seq) else {
                core.abort(seq);
                return;
            };
            if stop || live.finished {
                return; // end of generation: not text, not counted; `Finished` follows.
            }
            live.generated += 1;
            if let Some(lp) = logprob {
                live.logprob_acc = Some(live.logprob_acc.unwrap_or(0.0) + lp);
            }
            live.piece.clear();
            vocab.piece(token, &mut live.piece);
            let mut text = String::new();
            live.utf8.push(&live.piece, &mut text);
            match live.stop.push(&text) {
                StopOutcome::Continue(text) => live.emit_text(text),
                StopOutcome::Stopped(text) => {
                    live.emit_text(text);
                    core.abort(seq);
                    live.utf8 = Utf8Stream::new();
                    let stats = live.stats();
                    live.out.push(EngineEvent::Done { reason: FinishReason::Stop, stats });
                    live.finished = true;
                }
            }
        }
        SeqEvent::Finished { seq, reason, cached_tokens, .. } => {
            if let Some(live) = lives.get_mut(&seq) {
                live.cached_tokens = u32::try_from(cached_tokens).unwrap_or(u32::MAX);
                live.finish(match reason {
                    CoreFinish::Stop => FinishReason::Stop,
                    CoreFinish::Length => FinishReason::Length,
                });
            }
        }
        SeqEvent::Failed { seq, message } => {
            if let Some(live) = lives.get_mut(&seq)
                && !live.finished
            {
                live.out.push(EngineEvent::Error(message));
                live.finished = true;
            }
        }
    }
}
