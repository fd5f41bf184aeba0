//! Tests of dispatch (through `Engine::handle`, no network: `dispatch.rs`)
//! and of the real loop against a hand-rolled HTTP server speaking the
//! queue protocol (`http.rs`). Here: the module they run.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use serde_json::json;

use super::engine::Handled;
use super::*;
use crate::command::{obj, CommandHandle, JsonMap};
use crate::request::RequestData;
use crate::{LongCapacity, Outcome};

mod dispatch;
mod http;

/// Observations shared between a [`TestModule`] and the test.
#[derive(Default)]
struct Probe {
    cleaned_up: AtomicBool,
    cancelled: Mutex<Vec<String>>,
    initialised: AtomicUsize,
    /// `rendezvous` commands that have started; waited on with `arrivals`.
    arrived: Mutex<usize>,
    arrivals: Condvar,
}

impl Probe {
    /// Counts the caller in, then waits (up to 10 s, less than [`within`]
    /// waits for the reply) until `parties` callers have been counted in.
    /// Returns whether they all were: only if they run at the same time.
    fn rendezvous(&self, parties: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut arrived = self.arrived.lock();
        *arrived += 1;
        self.arrivals.notify_all();
        while *arrived < parties {
            if self.arrivals.wait_until(&mut arrived, deadline).timed_out() {
                return false;
            }
        }
        true
    }
}

/// A module with one command per behaviour under test.
struct TestModule {
    probe: Arc<Probe>,
    /// Long commands block on this until the test (or `cancel`) sends.
    gate_rx: Arc<Mutex<std_mpsc::Receiver<()>>>,
    gate_tx: Mutex<std_mpsc::Sender<()>>,
    fail_init: bool,
    selftest_ok: bool,
    /// Long commands it runs at once ([`ModuleRunner::long_capacity`]).
    long_slots: usize,
}

impl TestModule {
    /// The module, its probe and the sender that releases long commands.
    fn new() -> (Self, Arc<Probe>, std_mpsc::Sender<()>) {
        let (tx, rx) = std_mpsc::channel();
        let probe = Arc::new(Probe::default());
        let module = Self {
            probe: Arc::clone(&probe),
            gate_rx: Arc::new(Mutex::new(rx)),
            gate_tx: Mutex::new(tx.clone()),
            fail_init: false,
            selftest_ok: true,
            long_slots: 1,
        };
        (module, probe, tx)
    }
}

impl ModuleRunner for TestModule {
    fn initialise(&mut self, _ctx: &ModuleContext) -> Result<(), ModuleError> {
        self.probe.initialised.fetch_add(1, Ordering::SeqCst);
        if self.fail_init {
            return Err("no model".into());
        }
        Ok(())
    }

    fn process(&self, request: &RequestData) -> Result<Outcome, ModuleError> {
        match request.command() {
            "echo" => Ok(Outcome::done(json!({"message": request.string("text")?}))),
            "panic" => panic!("deliberate test panic"),
            "rendezvous" => {
                let parties = usize::try_from(request.int("parties")?)
                    .map_err(|_| ModuleError::from("negative 'parties'"))?;
                let met = self.probe.rendezvous(parties);
                Ok(Outcome::done(json!({"met": met})))
            }
            "long" | "long_fail" | "long_panic" => {
                let gate = Arc::clone(&self.gate_rx);
                let kind = request.command().to_owned();
                Ok(Outcome::Long(Box::new(move |cmd: &CommandHandle| {
                    cmd.publish(obj(json!({"reply": "partial", "progress": 50})));
                    // Cannot fail while the module (holding the sender) lives.
                    let _ = gate.lock().recv();
                    match kind.as_str() {
                        "long_fail" => Err("generation failed".into()),
                        "long_panic" => panic!("deliberate long panic"),
                        _ if cmd.is_cancelled() => {
                            Ok(obj(json!({"reply": "partial", "stop_reason": "cancelled"})))
                        }
                        _ => Ok(obj(json!({"reply": "full", "stop_reason": "completed"}))),
                    }
                })))
            }
            other => Err(format!("unknown command '{other}'").into()),
        }
    }

    fn command_status(&self, command_id: &str) -> JsonMap {
        obj(json!({"extra": command_id}))
    }

    fn cancel(&self, command_id: &str) {
        self.probe.cancelled.lock().push(command_id.to_owned());
        let _ = self.gate_tx.lock().send(());
    }

    fn selftest(&self) -> Result<(), ModuleError> {
        if self.selftest_ok {
            Ok(())
        } else {
            Err("model answers nonsense".into())
        }
    }

    fn cleanup(&self) {
        self.probe.cleaned_up.store(true, Ordering::SeqCst);
    }

    fn status(&self) -> JsonMap {
        obj(json!({"custom": 1}))
    }

    fn inference_device(&self) -> String {
        "GPU".into()
    }

    fn long_capacity(&self) -> LongCapacity {
        LongCapacity {
            slots: self.long_slots,
            queue: 0,
        }
    }
}

fn engine() -> (Arc<Engine<TestModule>>, Arc<Probe>, std_mpsc::Sender<()>) {
    let (module, probe, gate) = TestModule::new();
    let ctx = ModuleContext::new("Echo", "http://127.0.0.1:1/v1/");
    (Arc::new(Engine::new(module, ctx)), probe, gate)
}

fn reply(handled: Handled) -> JsonMap {
    match handled {
        // Dropping the gate starts a long command, as posting the reply does.
        Handled::Reply(reply, _gate) => reply,
        Handled::Quit => panic!("expected a reply, got quit"),
    }
}

fn req(command: &str, reqid: &str) -> RequestData {
    RequestData::new(command).with_request_id(reqid)
}
