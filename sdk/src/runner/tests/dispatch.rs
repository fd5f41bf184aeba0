//! Dispatch through `Engine::handle`, no network: replies, errors, long
//! commands, cancel, status, self-test, backoff.

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{json, Value};

use super::engine::Handled;
use super::serve::Backoff;
use super::*;

#[test]
fn process_reply_gets_the_envelope_and_counts() {
    let (engine, _, _) = engine();
    let r = reply(engine.handle(&req("Echo", "r1").with_value("text", "hi")));
    assert_eq!(r["message"], "hi");
    assert_eq!(r["success"], true);
    assert_eq!(r["code"], 200);
    assert_eq!(r["moduleId"], "Echo");
    assert_eq!(r["moduleName"], "Echo");
    assert_eq!(r["command"], "Echo");
    assert_eq!(r["requestId"], "r1");
    assert_eq!(r["inferenceDevice"], "GPU");
    assert!(r["processMs"].is_u64());
    assert_eq!(engine.status_data()["successfulInferences"], 1);
}

#[test]
fn module_error_becomes_an_error_reply() {
    let (engine, _, _) = engine();
    let r = reply(engine.handle(&req("echo", "r1")));
    assert_eq!(r["success"], false);
    assert_eq!(r["code"], 500);
    assert_eq!(r["error"], "missing value 'text'");
    assert_eq!(engine.status_data()["failedInferences"], 1);
}

#[test]
fn panic_in_process_becomes_an_error_reply() {
    let (engine, _, _) = engine();
    let r = reply(engine.handle(&req("panic", "r9")));
    assert_eq!(r["success"], false);
    assert_eq!(r["error"], "unable to process the request (#reqid r9)");
    // The module still works afterwards.
    let r = reply(engine.handle(&req("echo", "r10").with_value("text", "ok")));
    assert_eq!(r["message"], "ok");
}

#[test]
fn quit_obeys_own_id_or_no_id_only() {
    let (engine, _, _) = engine();
    assert_eq!(engine.handle(&req("Quit", "q1")), Handled::Quit);
    assert_eq!(
        engine.handle(&req("quit", "q2").with_value("moduleId", "echo")),
        Handled::Quit
    );
    let r = reply(engine.handle(&req("quit", "q3").with_value("moduleId", "Other")));
    assert_eq!(r["success"], false);
    assert_eq!(
        r["error"],
        "quit was addressed to module 'Other', not 'Echo'"
    );
}

#[test]
fn long_command_runs_in_background_until_completed() {
    let (engine, _, gate) = engine();
    let r = reply(engine.handle(&req("long", "c1")));
    assert_eq!(r["success"], true);
    assert_eq!(r["message"], "Command is running in the background");
    assert_eq!(r["commandId"], "c1");
    assert_eq!(r["commandStatus"], "running");
    assert_eq!(r["requestId"], "c1");

    // A second long command is refused while the first runs.
    let r = reply(engine.handle(&req("long", "c2")));
    assert_eq!(r["success"], false);
    assert_eq!(r["commandId"], "c1");
    assert_eq!(r["error"], "A long running command is already in progress");
    assert_eq!(
        r["errorCode"], "queue_full",
        "the server answers it as a full queue"
    );

    // Running: published fields appear once the thread published them.
    let status = |engine: &Arc<Engine<TestModule>>| {
        reply(engine.handle(&req("get_command_status", "s").with_value("commandId", "c1")))
    };
    let mut r = status(&engine);
    while r.get("progress").is_none() {
        std::thread::yield_now();
        r = status(&engine);
    }
    assert_eq!(r["commandStatus"], "running");
    assert_eq!(
        r["message"],
        "The long running command is still in progress"
    );
    assert_eq!(r["reply"], "partial");
    assert_eq!(r["extra"], "c1");
    assert_eq!(r["command"], "get_command_status");

    gate.send(()).expect("long process is waiting");
    assert!(engine.commands.wait_idle(Duration::from_secs(30)));
    for _ in 0..2 {
        let r = status(&engine);
        assert_eq!(r["commandStatus"], "completed");
        assert_eq!(r["success"], true);
        assert_eq!(r["message"], "Command has completed");
        assert_eq!(r["error"], Value::Null);
        assert_eq!(r["reply"], "full");
        assert_eq!(r["code"], 200);
    }
    let data = engine.status_data();
    assert_eq!(data["successfulInferences"], 1, "{data:?}");
    assert_eq!(data["failedInferences"], 1, "the refused second command");
}

#[test]
fn cancel_command_sets_the_flag_and_calls_the_hook() {
    let (engine, probe, _gate) = engine();
    reply(engine.handle(&req("long", "c1")));
    let r = reply(engine.handle(&req("cancel_command", "x").with_value("commandId", "c1")));
    assert_eq!(
        (
            &r["success"],
            &r["message"],
            &r["commandId"],
            &r["commandStatus"]
        ),
        (
            &json!(true),
            &json!("The command has been cancelled"),
            &json!("c1"),
            &json!("cancelled")
        )
    );
    assert_eq!(*probe.cancelled.lock(), ["c1"]);
    // The hook released the gate; the process saw the flag, and the reply
    // came once it had returned, so a next long command can start at once.
    assert!(
        engine.commands.live().is_empty(),
        "cancel_command answered before the command stopped"
    );
    let r = reply(engine.handle(&req("get_command_status", "s").with_value("commandId", "c1")));
    assert_eq!(r["commandStatus"], "completed");
    assert_eq!(r["stop_reason"], "cancelled");

    let r = reply(engine.handle(&req("cancel_command", "y").with_value("commandId", "zz")));
    assert_eq!(r["success"], false);
    assert_eq!(r["error"], "Unknown command ID 'zz'");
    assert_eq!(probe.cancelled.lock().len(), 1);
}

#[test]
fn long_process_error_or_panic_is_reported_as_failed() {
    for (command, error) in [
        ("long_fail", "generation failed"),
        (
            "long_panic",
            "the long running command failed unexpectedly (#reqid c-long_panic)",
        ),
    ] {
        let (engine, _, gate) = engine();
        let id = format!("c-{command}");
        reply(engine.handle(&req(command, &id)));
        gate.send(()).expect("long process is waiting");
        assert!(engine.commands.wait_idle(Duration::from_secs(30)));
        let r = reply(engine.handle(&req("get_command_status", "s").with_value("commandId", &id)));
        assert_eq!(r["commandStatus"], "failed", "{command}");
        assert_eq!(r["success"], false);
        assert_eq!(r["error"], error);
        assert_eq!(r["reply"], "partial", "published fields are kept");
        assert_eq!(engine.status_data()["failedInferences"], 1);
    }
}

#[test]
fn command_status_for_unknown_or_no_command() {
    let (engine, _, _) = engine();
    let r = reply(engine.handle(&req("get_command_status", "s").with_value("commandId", "c1")));
    assert_eq!(r["commandStatus"], "not started");
    assert_eq!(r["success"], false);
    assert_eq!(r["code"], 500);
    let r = reply(engine.handle(&req("get_command_status", "s")));
    assert_eq!(r["commandStatus"], "unknown");
}

#[test]
fn selftest_command_reports_the_result() {
    let (engine, _, _) = engine();
    let r = reply(engine.handle(&req("selftest", "t")));
    assert_eq!(r["success"], true);
    let (mut module, _, _) = TestModule::new();
    module.selftest_ok = false;
    let engine = Arc::new(Engine::new(
        module,
        ModuleContext::new("Echo", "http://h/v1/"),
    ));
    let r = reply(engine.handle(&req("selftest", "t")));
    assert_eq!(r["success"], false);
    assert_eq!(r["error"], "Self-test failed: model answers nonsense");
}

#[test]
fn status_data_merges_module_fields_and_reports_gpu_as_string() {
    let (engine, _, _) = engine();
    let data = engine.status_data();
    assert_eq!(data["inferenceDevice"], "GPU");
    assert_eq!(data["canUseGPU"], "true");
    assert_eq!(data["custom"], 1);
    assert_eq!(data["numInferences"], 0);

    let (module, _, _) = TestModule::new();
    let mut ctx = ModuleContext::new("Echo", "http://h/v1/");
    ctx.enable_gpu = false;
    let data = Engine::new(module, ctx).status_data();
    assert_eq!(data["canUseGPU"], "false");
}

#[test]
fn backoff_doubles_to_ten_seconds_and_resets() {
    let mut b = Backoff::default();
    let secs: Vec<u64> = (0..6).map(|_| b.next_delay().as_secs()).collect();
    assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
    b.reset();
    assert_eq!(b.next_delay(), Duration::from_secs(1));
}

#[test]
fn selftest_mode_runs_initialise_selftest_cleanup() {
    let ctx = ModuleContext::new("Echo", "http://127.0.0.1:1/v1/");
    let (module, probe, _) = TestModule::new();
    let code = run_with(module, ctx.clone(), RunOptions { selftest: true });
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(probe.initialised.load(Ordering::SeqCst), 1);
    assert!(probe.cleaned_up.load(Ordering::SeqCst));

    let (mut module, probe, _) = TestModule::new();
    module.selftest_ok = false;
    assert_eq!(
        run_with(module, ctx.clone(), RunOptions { selftest: true }),
        ExitCode::FAILURE
    );
    assert!(probe.cleaned_up.load(Ordering::SeqCst));

    let (mut module, probe, _) = TestModule::new();
    module.fail_init = true;
    assert_eq!(
        run_with(module, ctx, RunOptions { selftest: true }),
        ExitCode::FAILURE
    );
    assert!(!probe.cleaned_up.load(Ordering::SeqCst));
}

#[test]
fn failed_initialise_exits_with_failure_before_polling() {
    let (mut module, probe, _) = TestModule::new();
    module.fail_init = true;
    // Port 1 is closed: reaching the poll loop would spin on backoff.
    let ctx = ModuleContext::new("Echo", "http://127.0.0.1:1/v1/");
    assert_eq!(
        run_with(module, ctx, RunOptions::default()),
        ExitCode::FAILURE
    );
    assert_eq!(probe.initialised.load(Ordering::SeqCst), 1);
}

#[test]
fn a_long_process_starts_only_once_its_reply_is_released() {
    let (engine, _probe, release) = engine();
    let Handled::Reply(started, gate) = engine.handle(&req("long", "c1")) else {
        panic!("expected a reply");
    };
    assert_eq!(started["commandStatus"], "running");
    let gate = gate.expect("a long command comes with its start gate");
    let status = |engine: &Arc<Engine<TestModule>>| {
        reply(engine.handle(&req("get_command_status", "s").with_value("commandId", "c1")))
    };
    // Held: the process has not run, so it published nothing yet.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(status(&engine).get("progress"), None);
    drop(gate); // what posting the reply does
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&engine).get("progress").is_none() {
        assert!(Instant::now() < deadline, "the process never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    release.send(()).unwrap();
    assert!(engine.commands.wait_idle(Duration::from_secs(10)));
}
