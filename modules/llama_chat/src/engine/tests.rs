use super::*;
use crate::generation::{FinishReason, GenerationEvent, Summary};
use crate::gguf::{write_demo_model, DemoModelSpec};
use std::sync::LazyLock;
use std::time::Duration;

/// Threads per test generation: tests run in parallel on few shared cores.
const TEST_THREADS: u32 = 1;

pub(crate) struct TestModel {
    _dir: tempfile::TempDir,
    pub engine: LlamaEngine,
}

pub(crate) fn load_demo(
    spec: &DemoModelSpec,
    context_size: Option<u32>,
    parallel: u32,
) -> TestModel {
    load_demo_with(
        spec,
        EngineConfig {
            context_size,
            parallel,
            ..test_config()
        },
    )
}

/// The engine settings of the tests: few threads, small batches.
fn test_config() -> EngineConfig {
    EngineConfig {
        threads: TEST_THREADS,
        batch_size: 64,
        ..EngineConfig::default()
    }
}

fn load_demo_with(spec: &DemoModelSpec, config: EngineConfig) -> TestModel {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.gguf");
    write_demo_model(&path, spec).unwrap();
    let engine = LlamaEngine::load(&path, config).unwrap();
    TestModel { _dir: dir, engine }
}

/// One tiny model shared by the tests that only need *a* model.
pub(crate) static TINY: LazyLock<TestModel> =
    LazyLock::new(|| load_demo(&DemoModelSpec::tiny(), None, 4));

fn req(max_tokens: u32, temperature: f32, seed: u32) -> ChatRequest {
    ChatRequest {
        prompt: "Tell me about the stars.".into(),
        system_prompt: "You are a helpful assistant.".into(),
        max_tokens,
        temperature,
        seed: Some(seed),
        ..ChatRequest::default()
    }
}

fn run(request: ChatRequest) -> (String, Summary) {
    TINY.engine.start(request).unwrap().wait().unwrap()
}

#[test]
fn a_chat_produces_a_non_empty_reply_and_a_summary() {
    let (reply, s) = run(req(48, 0.8, 1));
    assert!(!reply.trim().is_empty(), "empty reply");
    assert_eq!(s.finish_reason, FinishReason::Length);
    assert_eq!(s.completion_tokens, 48);
    assert!(s.prompt_tokens > 10, "prompt_tokens {}", s.prompt_tokens);
    assert!(s.tokens_per_second > 0.0);
    assert!(s.time_to_first_token_ms > 0.0);
    assert_eq!(s.seed, 1);
    eprintln!(
        "tiny model: {:.0} tokens/s, first token after {:.2} ms, reply {reply:?}",
        s.tokens_per_second, s.time_to_first_token_ms
    );
}

#[test]
fn max_tokens_is_honoured_exactly() {
    for n in [1, 7, 100] {
        let (_, s) = run(req(n, 1.0, 3));
        assert_eq!(s.completion_tokens, n);
        assert_eq!(s.finish_reason, FinishReason::Length);
    }
}

#[test]
fn max_tokens_zero_fills_the_context() {
    let m = load_demo(&DemoModelSpec::tiny(), Some(128), 1);
    let (_, s) = m.engine.start(req(0, 1.0, 3)).unwrap().wait().unwrap();
    assert_eq!(s.finish_reason, FinishReason::Length);
    assert_eq!(s.prompt_tokens + s.completion_tokens, 128);
}

#[test]
fn the_same_seed_gives_the_same_reply_and_another_seed_another() {
    let (a, _) = run(req(40, 1.0, 11));
    let (b, _) = run(req(40, 1.0, 11));
    let (c, _) = run(req(40, 1.0, 12));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn temperature_zero_is_greedy_and_ignores_the_seed() {
    let (a, _) = run(req(30, 0.0, 1));
    let (b, _) = run(req(30, 0.0, 999));
    assert_eq!(a, b);
    assert!(!a.is_empty());
}

#[test]
fn cancel_stops_generation_within_one_token_and_the_next_chat_works() {
    let generation = TINY.engine.start(req(0, 1.0, 5)).unwrap();
    // Wait for the reply to be under way.
    let mut received = 0u32;
    while received < 3 {
        match generation.recv() {
            GenerationEvent::Piece(_) => received += 1,
            other => panic!("ended early: {other:?}"),
        }
    }
    generation.cancel();
    // Every token counted by now was produced before the cancel; at most the
    // one being sampled when the flag was set can follow.
    let n0 = generation.tokens_generated();
    assert!(
        n0 >= received,
        "{n0} tokens counted, {received} pieces read"
    );
    let summary = loop {
        match generation.recv() {
            GenerationEvent::Piece(_) => {}
            GenerationEvent::Done(s) => break s,
            GenerationEvent::Failed(e) => panic!("{e}"),
        }
    };
    assert_eq!(summary.finish_reason, FinishReason::Cancelled);
    assert!(
        summary.completion_tokens <= n0 + 1,
        "{} tokens, {n0} when cancelled",
        summary.completion_tokens
    );
    assert_eq!(generation.tokens_generated(), summary.completion_tokens);

    let (reply, s) = run(req(10, 1.0, 5));
    assert_eq!(s.completion_tokens, 10);
    assert!(!reply.is_empty());
}

#[test]
fn top_k_1_and_a_tiny_top_p_leave_only_the_greedy_token() {
    let greedy = run(req(24, 0.0, 1)).0;
    let truncated = |seed: u32, top_k: u32, top_p: f32| {
        run(ChatRequest {
            top_k,
            top_p,
            ..req(24, 1.0, seed)
        })
        .0
    };
    // The control: without truncation these seeds sample something else,
    // so an ignored top_k or top_p would fail the asserts below.
    for seed in [2, 3] {
        assert_ne!(truncated(seed, 0, 1.0), greedy, "seed {seed} untruncated");
    }
    for seed in [2, 3] {
        // One candidate is left, so the draw has no choice.
        assert_eq!(truncated(seed, 1, 1.0), greedy, "top_k 1, seed {seed}");
        // Below 1 / n_vocab, so the most likely token alone reaches it
        // (llama.cpp's top_p keeps at least min_keep = 1 token).
        assert_eq!(truncated(seed, 0, 1e-4), greedy, "top_p 1e-4, seed {seed}");
    }
    // Both in the chain at once, with room to choose: a full, seeded reply.
    let both = ChatRequest {
        top_k: 40,
        top_p: 0.9,
        ..req(24, 1.0, 7)
    };
    let (a, s) = run(both.clone());
    assert_eq!(s.completion_tokens, 24);
    assert_eq!(run(both).0, a);
}

#[test]
fn dropping_a_generation_stops_it_and_frees_its_slot() {
    let (sink, generation) = Generation::channel(CancelToken::default());
    drop(generation);
    assert!(sink.is_cancelled());
    assert!(
        !sink.piece("x".into()),
        "the producer learns the reader is gone"
    );

    let m = load_demo(&DemoModelSpec::tiny(), None, 1);
    let g = m.engine.start(req(0, 1.0, 5)).unwrap();
    assert!(matches!(g.recv(), GenerationEvent::Piece(_)));
    let cancel = g.cancel_token();
    drop(g);
    assert!(!cancel.is_cancelled(), "the caller's flag is left alone");
    // The only slot is free again: the next chat runs.
    let (_, s) = m.engine.start(req(5, 1.0, 5)).unwrap().wait().unwrap();
    assert_eq!(s.completion_tokens, 5);
    wait_idle(&m.engine);
}

#[test]
fn a_prompt_longer_than_the_context_is_refused_before_decoding() {
    let prompt = "the quick brown fox ".repeat(400);
    let err = TINY.engine.start(ChatRequest::new(prompt)).unwrap_err();
    match &err {
        ChatError::PromptTooLong {
            prompt_tokens,
            context,
        } => {
            assert_eq!(*context, 1024);
            assert!(*prompt_tokens > 1024);
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with("prompt is ") && msg.contains("but the context holds 1024"),
        "{msg}"
    );
}

#[test]
fn max_tokens_beyond_the_context_is_refused() {
    let err = TINY.engine.start(req(5000, 0.5, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            ChatError::MaxTokensBeyondContext {
                max_tokens: 5000,
                context: 1024,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("context holds 1024"), "{err}");
}

#[test]
fn stop_strings_end_the_reply_before_them() {
    let (full, _) = run(req(60, 1.0, 21));
    // Pick a stop string from the middle of the reply.
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 30, "reply too short: {full:?}");
    let stop: String = chars[20..24].iter().collect();
    let expected = &full[..full.find(&stop).unwrap()];

    let mut r = req(60, 1.0, 21);
    r.stop = vec!["never appears \u{1}".into(), stop.clone()];
    let (reply, s) = run(r);
    assert_eq!(s.finish_reason, FinishReason::StopString);
    assert_eq!(reply, expected, "stop {stop:?}");
    assert!(!reply.contains(&stop));
    assert!(s.completion_tokens < 60);
}

#[test]
fn an_end_of_generation_token_completes_the_reply() {
    let spec = DemoModelSpec {
        eog_bias: 20.0,
        ..DemoModelSpec::tiny()
    };
    let m = load_demo(&spec, None, 1);
    let (reply, s) = m.engine.start(req(50, 0.8, 1)).unwrap().wait().unwrap();
    assert_eq!(s.finish_reason, FinishReason::Stop);
    assert_eq!(s.completion_tokens, 0);
    assert_eq!(reply, "");
}

#[test]
fn invalid_requests_are_refused() {
    let mut r = req(5, -1.0, 1);
    assert!(
        matches!(TINY.engine.start(r.clone()), Err(ChatError::InvalidRequest(m)) if m.contains("temperature"))
    );
    r.temperature = 0.5;
    r.prompt = " ".into();
    assert!(
        matches!(TINY.engine.start(r), Err(ChatError::InvalidRequest(m)) if m.contains("prompt"))
    );
}

#[test]
fn the_demo_model_uses_its_chatml_template_through_llama_cpp() {
    assert_eq!(TINY.engine.prompt_format(), "llama.cpp built-in");
    let text = TINY.engine.render_prompt("Sys", "Hi").unwrap();
    assert_eq!(
        text,
        template::chatml(&template::chat_messages("Sys", "Hi"))
    );
    // Control tokens are parsed as single tokens, and BOS is prepended.
    let tokens = TINY.engine.tokenize(&text);
    let vocab = TINY.engine.model().vocab();
    assert_eq!(tokens[0], vocab.bos());
    let im_start = tokens.iter().filter(|t| vocab.is_control(**t)).count();
    assert_eq!(im_start, 1 + 5, "BOS + 3 <|im_start|> + 2 <|im_end|>");
}

#[test]
fn a_model_without_a_template_falls_back_to_chatml() {
    let spec = DemoModelSpec {
        chat_template: None,
        ..DemoModelSpec::tiny()
    };
    let m = load_demo(&spec, None, 1);
    assert_eq!(m.engine.prompt_format(), "ChatML fallback");
    let text = m.engine.render_prompt("", "x").unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    );
    let (_, s) = m.engine.start(req(5, 0.5, 1)).unwrap().wait().unwrap();
    assert_eq!(s.completion_tokens, 5);
}

#[test]
fn a_template_llama_cpp_does_not_know_is_rendered_with_minijinja() {
    let spec = DemoModelSpec {
        chat_template: Some(
            "{{ bos_token }}{% for m in messages %}<<{{ m['role'] | upper }}>> {{ m['content'].strip() }}\n{% endfor %}{% if add_generation_prompt %}<<ASSISTANT>> {% endif %}".into(),
        ),
        ..DemoModelSpec::tiny()
    };
    let m = load_demo(&spec, None, 1);
    assert_eq!(m.engine.prompt_format(), "jinja (minijinja)");
    let text = m.engine.render_prompt("Sys ", " Hi").unwrap();
    assert_eq!(text, "<s><<SYSTEM>> Sys\n<<USER>> Hi\n<<ASSISTANT>> ");
    // The template wrote BOS, so it is not added a second time.
    let tokens = m.engine.tokenize(&text);
    let bos = m.engine.model().vocab().bos();
    assert_eq!(tokens.iter().filter(|t| **t == bos).count(), 1);
}

/// Waits until `engine` has no chat in a slot or waiting; panics after 30 s.
fn wait_idle(engine: &LlamaEngine) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while engine.load().busy_slots + engine.load().waiting > 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", engine.load());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The first event of each generation, which must be a piece.
fn first_pieces(generations: &[Generation]) {
    for (i, g) in generations.iter().enumerate() {
        match g.recv() {
            GenerationEvent::Piece(_) => {}
            other => panic!("chat {i} ended before its first piece: {other:?}"),
        }
    }
}

#[test]
fn four_chats_run_at_once_and_each_ends_with_exactly_its_max_tokens() {
    let m = load_demo(&DemoModelSpec::tiny(), None, 4);
    let lengths = [20, 35, 50, 200];
    let generations: Vec<Generation> = lengths
        .iter()
        .zip(1..)
        .map(|(&n, seed)| m.engine.start(req(n, 1.0, seed)).unwrap())
        .collect();
    // Every chat has produced text before any of them could have finished
    // (with one slot, the second would start only after the first's end).
    first_pieces(&generations);
    let load = m.engine.load();
    assert_eq!((load.slots, load.waiting), (4, 0), "{load:?}");
    for (g, n) in generations.into_iter().zip(lengths) {
        let (reply, s) = g.wait().unwrap();
        assert_eq!(s.completion_tokens, n);
        assert_eq!(s.finish_reason, FinishReason::Length);
        assert!(!reply.is_empty());
    }
    wait_idle(&m.engine);
    assert!(m.engine.load().tokens_per_second > 0.0);
}

#[test]
fn cancelling_one_chat_leaves_the_other_three_running_to_the_end() {
    let m = load_demo(&DemoModelSpec::tiny(), None, 4);
    let generations: Vec<Generation> = (1..=4)
        .map(|seed| m.engine.start(req(300, 1.0, seed)).unwrap())
        .collect();
    first_pieces(&generations);
    generations[1].cancel();
    let n0 = generations[1].tokens_generated();
    let summaries: Vec<Summary> = generations
        .into_iter()
        .map(|g| g.wait().unwrap().1)
        .collect();
    assert_eq!(summaries[1].finish_reason, FinishReason::Cancelled);
    assert!(
        summaries[1].completion_tokens <= n0 + 1,
        "{} tokens, {n0} when cancelled",
        summaries[1].completion_tokens
    );
    for i in [0, 2, 3] {
        assert_eq!(summaries[i].finish_reason, FinishReason::Length, "chat {i}");
        assert_eq!(summaries[i].completion_tokens, 300, "chat {i}");
    }
}

#[test]
fn a_chat_beyond_the_slots_waits_and_then_runs() {
    let m = load_demo(&DemoModelSpec::tiny(), None, 2);
    // As long as the context allows: they end only when cancelled or dropped.
    let running: Vec<Generation> = (1..=2)
        .map(|seed| m.engine.start(req(0, 1.0, seed)).unwrap())
        .collect();
    first_pieces(&running);
    let third = m.engine.start(req(5, 1.0, 3)).unwrap();
    assert!(
        third.recv_timeout(Duration::from_millis(50)).is_none(),
        "the third chat ran with both slots busy"
    );
    assert_eq!(m.engine.load().waiting, 1);
    running[0].cancel();
    let (_, s) = third.wait().unwrap();
    assert_eq!(s.completion_tokens, 5);
    drop(running);
    wait_idle(&m.engine);
}

#[test]
fn a_burst_waits_for_its_chats_on_their_way_so_their_prompts_share_a_batch() {
    // A gathering far longer than this test's own delays.
    let m = load_demo_with(
        &DemoModelSpec::tiny(),
        EngineConfig {
            gather_max: Duration::from_secs(30),
            ..test_config()
        },
    );
    let on_its_way = m.engine.prepare(req(5, 0.0, 1)).unwrap();
    let first = m.engine.start(req(5, 0.0, 2)).unwrap();
    // Far past the 1 ms gap that ends a gathering with nothing on its way.
    assert!(
        first.recv_timeout(Duration::from_millis(300)).is_none(),
        "the first chat started while another was on its way"
    );
    let second = m.engine.launch(on_its_way, CancelToken::default());
    for g in [first, second] {
        assert_eq!(g.wait().unwrap().1.completion_tokens, 5);
    }
    // A prepared chat that is dropped is no longer on its way: the next
    // chat starts after the short gap, not after the 30 s gathering.
    drop(m.engine.prepare(req(5, 0.0, 3)).unwrap());
    // Nor is one that failed to prepare (it is counted from the start of
    // preparing).
    assert!(m.engine.prepare(req(5, -1.0, 5)).is_err());
    let started = std::time::Instant::now();
    assert_eq!(run_on(&m, req(5, 0.0, 4)).1.completion_tokens, 5);
    assert!(started.elapsed() < Duration::from_secs(20));
}

fn run_on(m: &TestModel, request: ChatRequest) -> (String, Summary) {
    m.engine.start(request).unwrap().wait().unwrap()
}

/// The conversation of a two-turn test: turn 1, then turn 1's reply and a
/// second question.
fn turns(first_reply: Option<&str>) -> ChatRequest {
    let mut messages = vec![
        Message::new("system", "You are a helpful assistant."),
        Message::new("user", "Tell me about the stars."),
    ];
    if let Some(reply) = first_reply {
        messages.push(Message::new("assistant", reply));
        messages.push(Message::new("user", "And the planets?"));
    }
    ChatRequest {
        messages,
        max_tokens: 24,
        temperature: 0.0,
        ..ChatRequest::default()
    }
}

#[test]
fn a_follow_up_turn_reuses_the_cache_and_replies_as_without_it() {
    let m = load_demo(&DemoModelSpec::tiny(), None, 1);
    let (first, s1) = m.engine.start(turns(None)).unwrap().wait().unwrap();
    assert_eq!(s1.cached_tokens, 0, "nothing was cached before");
    let (second, s2) = m.engine.start(turns(Some(&first))).unwrap().wait().unwrap();
    // The first turn's prompt at least came from the cache.
    assert!(
        s2.cached_tokens >= s1.prompt_tokens,
        "{} cached, the first prompt had {}",
        s2.cached_tokens,
        s1.prompt_tokens
    );
    assert!(s2.cached_tokens < s2.prompt_tokens);

    // The same second turn on an engine with nothing cached.
    let fresh = load_demo(&DemoModelSpec::tiny(), None, 1);
    let (uncached, s3) = fresh
        .engine
        .start(turns(Some(&first)))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(s3.cached_tokens, 0);
    assert_eq!(s3.prompt_tokens, s2.prompt_tokens);
    assert_eq!(second, uncached);
}

/// Whether a greedy reply is the same alone and beside other chats: llama.cpp
/// does not promise it (a batch of several sequences may sum in another
/// order). Measured here on the tiny F32 model, CPU, one thread: the same,
/// on every run so far. Printed, not asserted.
#[test]
fn a_greedy_reply_alone_and_beside_other_chats() {
    let greedy = || req(60, 0.0, 1);
    // Alone, on an engine of its own, so that no cache is shared below.
    let single = load_demo(&DemoModelSpec::tiny(), None, 1);
    let (alone, _) = single.engine.start(greedy()).unwrap().wait().unwrap();
    let m = load_demo(&DemoModelSpec::tiny(), None, 4);
    // Other prompts, as long as the context allows: still running when the
    // greedy one ends.
    let others: Vec<Generation> = (2..=4)
        .map(|seed| {
            let other = ChatRequest {
                prompt: format!("Chat {seed}: tell me about the sea."),
                ..req(0, 1.0, seed)
            };
            m.engine.start(other).unwrap()
        })
        .collect();
    first_pieces(&others);
    let (beside, s) = m.engine.start(greedy()).unwrap().wait().unwrap();
    assert_eq!(s.completion_tokens, 60);
    assert!(s.cached_tokens < 5, "beside came from the cache: {s:?}");
    assert_eq!(
        m.engine.load().busy_slots,
        3,
        "the others were still running"
    );
    eprintln!(
        "greedy reply beside 3 other chats is {} the reply alone",
        if alone == beside {
            "the same as"
        } else {
            "DIFFERENT from"
        }
    );
    drop(others);
}

#[test]
fn token_starts_are_where_the_models_tokens_begin_in_the_text() {
    let text = "The stars shine over the quiet sea tonight.";
    let starts = TINY.engine.token_starts(text).unwrap();
    assert!(starts.len() >= 8, "{starts:?}");
    assert_eq!(starts[0], 0);
    // Ascending; the space SentencePiece adds before the text may be a
    // token of its own, at 0 too.
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    assert!(*starts.last().unwrap() < text.len());
    // Each word starts a token (SentencePiece puts the space before it in
    // the word's token): every word begins at or just after a start.
    for (at, _) in text.match_indices(' ') {
        assert!(
            starts.contains(&at) || starts.contains(&(at + 1)),
            "{at} in {starts:?}"
        );
    }
    assert!(TINY.engine.token_starts("").unwrap().is_empty());
}
