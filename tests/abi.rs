//! Results that break the canonical ABI in ways a Rust guest cannot
//! produce (wit-bindgen writes discriminants from valid Rust values and
//! copies lists of records into their canonical layout), from a component
//! assembled here: a core module whose `process` returns a memory image
//! the test lays out byte by byte, wrapped by wit-component with the real
//! WIT. plugins/fixtures/malformed covers the flaws a Rust guest can make
//! (tests/offline.rs); these are the rest.

use std::path::{Path, PathBuf};

mod common;

use bytes::Bytes;
use common::transform;
use sluice::message::{Message, Qos};
use sluice::wasm::{Instance, WasmHost};
use sluice_tests::workspace_root;
use wasm_encoder::{
    CodeSection, ConstExpr, DataSection, ExportKind, ExportSection, Function, FunctionSection,
    GlobalSection, GlobalType, MemorySection, MemoryType, Module, TypeSection, ValType,
};

/// Where `process` finds its return area (the results' pointer and count).
const RETURN_AREA: u32 = 0x100;
/// `init`'s return area: all zeros, `ok(())`.
const INIT_RETURN_AREA: u32 = 0x200;
/// The results (12 bytes each, aligned to 4).
const RESULTS: u32 = 0x1000;
/// The output messages (72 bytes each, aligned to 8).
const MESSAGES: u32 = 0x2000;
/// The strings and byte lists.
const TEXT: u32 = 0x8000;
/// 1 MiB of zeros, for payloads that alias each other.
const BIG: u32 = 0x10000;
const BIG_LEN: u32 = 1 << 20;
/// Where `cabi_realloc` starts handing out memory to the host's lowering.
const HEAP: u32 = BIG + BIG_LEN;
/// The memory, in 64 KiB pages: room for the heap after `HEAP`.
const PAGES: u64 = (HEAP as u64 + (1 << 20)) >> 16;

// The `message` record (runtime/src/wasm/abi.rs has the same offsets,
// derived from wasmtime's layout rules).
const MESSAGE_SIZE: u32 = 72;
const KAFKA_TOPIC: usize = 8;
const KEY: usize = 20;
const PAYLOAD: usize = 32;
const HEADERS: usize = 40;
const TIMESTAMP: usize = 48;
const QOS: usize = 56;
const CONTENT_TYPE: usize = 60;

/// The guest memory `process` hands back: its results and what they
/// point at.
struct Image {
    /// The results' pointer and count, as the return area says.
    results: (u32, u32),
    /// Bytes at guest addresses.
    data: Vec<(u32, Vec<u8>)>,
}

fn put(buf: &mut [u8], at: usize, word: u32) {
    buf[at..at + 4].copy_from_slice(&word.to_le_bytes());
}

/// A well-formed output: topic `out` and payload `{}` (both at `TEXT`),
/// no options, no headers, timestamp 7, QoS 1.
fn message() -> Vec<u8> {
    let mut m = vec![0; MESSAGE_SIZE as usize];
    put(&mut m, 0, TEXT);
    put(&mut m, 4, 3);
    put(&mut m, PAYLOAD, TEXT + 3);
    put(&mut m, PAYLOAD + 4, 2);
    put(&mut m, HEADERS, TEXT);
    m[TIMESTAMP] = 7;
    m[QOS] = 1;
    m
}

impl Image {
    /// One result, `ok` with `outputs` (message records in a row).
    fn ok(outputs: Vec<u8>) -> Image {
        let count = outputs.len() as u32 / MESSAGE_SIZE;
        Image {
            results: (RESULTS, 0),
            data: vec![(MESSAGES, outputs), (TEXT, b"out{}".to_vec())],
        }
        .with_results(&[(0, MESSAGES, count)])
    }

    /// Replaces the results by `results`: each a tag (0 `ok`, 1 `err`) and
    /// its list's (or error text's) pointer and length.
    fn with_results(mut self, results: &[(u8, u32, u32)]) -> Image {
        let mut bytes = vec![0; 12 * results.len()];
        for (i, &(tag, at, n)) in results.iter().enumerate() {
            bytes[12 * i] = tag;
            put(&mut bytes, 12 * i + 4, at);
            put(&mut bytes, 12 * i + 8, n);
        }
        self.data.retain(|(at, _)| *at != RESULTS);
        self.data.push((RESULTS, bytes));
        self.results = (RESULTS, results.len() as u32);
        self
    }

    /// Changes the bytes at `at`, which must lie in one of the image's
    /// pieces.
    fn patch(mut self, at: u32, bytes: &[u8]) -> Image {
        let (start, piece) = self
            .data
            .iter_mut()
            .find(|(start, piece)| (*start..*start + piece.len() as u32).contains(&at))
            .expect("a patch inside the image");
        let i = (at - *start) as usize;
        piece[i..i + bytes.len()].copy_from_slice(bytes);
        self
    }
}

/// The core module: a memory holding `image`, a bump allocator as
/// `cabi_realloc`, `init` answering `ok(())` and `process` answering with
/// the return area at `RETURN_AREA`.
fn core_module(image: &Image) -> Vec<u8> {
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32; 4], [ValType::I32]);
    types.ty().function([ValType::I32; 2], [ValType::I32]);
    module.section(&types);
    let mut functions = FunctionSection::new();
    functions.function(0).function(1).function(1);
    module.section(&functions);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: PAGES,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    module.section(&memories);
    let mut globals = GlobalSection::new();
    globals.global(
        GlobalType {
            val_type: ValType::I32,
            mutable: true,
            shared: false,
        },
        &ConstExpr::i32_const(HEAP as i32),
    );
    module.section(&globals);
    let mut exports = ExportSection::new();
    exports
        .export("memory", ExportKind::Memory, 0)
        .export("cabi_realloc", ExportKind::Func, 0)
        .export(
            "sluice:transform/transformer@0.1.0#init",
            ExportKind::Func,
            1,
        )
        .export(
            "sluice:transform/transformer@0.1.0#process",
            ExportKind::Func,
            2,
        );
    module.section(&exports);

    let mut code = CodeSection::new();
    // cabi_realloc(old, old_size, align, size): the heap pointer rounded up
    // to `align`, then moved past `size`; nothing is ever freed.
    let mut realloc = Function::new([(1, ValType::I32)]);
    realloc
        .instructions()
        .global_get(0)
        .local_get(2)
        .i32_add()
        .i32_const(1)
        .i32_sub()
        .i32_const(0)
        .local_get(2)
        .i32_sub()
        .i32_and()
        .local_tee(4)
        .local_get(3)
        .i32_add()
        .global_set(0)
        .local_get(4)
        .end();
    code.function(&realloc);
    for area in [INIT_RETURN_AREA, RETURN_AREA] {
        let mut f = Function::new([]);
        f.instructions().i32_const(area as i32).end();
        code.function(&f);
    }
    module.section(&code);

    let mut data = DataSection::new();
    let mut area = image.results.0.to_le_bytes().to_vec();
    area.extend(image.results.1.to_le_bytes());
    data.active(0, &ConstExpr::i32_const(RETURN_AREA as i32), area);
    for (at, bytes) in &image.data {
        data.active(0, &ConstExpr::i32_const(*at as i32), bytes.iter().copied());
    }
    module.section(&data);
    module.finish()
}

/// The component of `image`, written to `dir`.
fn component(dir: &Path, name: &str, image: &Image) -> PathBuf {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_path(workspace_root().join("wit"))
        .expect("the WIT");
    let world = resolve
        .select_world(&[package], Some("transform"))
        .expect("the transform world");
    let mut module = core_module(image);
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("embed the WIT");
    let bytes = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .expect("a core module")
        .encode()
        .expect("a component");
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).expect("write the component");
    path
}

fn input() -> Message {
    Message {
        topic: "in".into(),
        payload: Bytes::from_static(b"{}"),
        ..Message::default()
    }
}

/// The image without a flaw is lifted as the message it describes, so each
/// flawed image below fails for its one flaw alone.
#[test]
fn a_hand_laid_result_is_lifted_as_laid() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = WasmHost::new(None).expect("wasm engine");
    let t = transform(component(dir.path(), "valid", &Image::ok(message())), "{}");
    let loaded = host.load(&t).expect("the component loads");
    let mut instance = Instance::new(&loaded, "abi", &t).expect("init");
    let processed = instance.process(&[input()]).expect("the call");
    let outputs = processed.results[0].as_ref().expect("ok");
    let expected = Message {
        topic: "out".into(),
        payload: Bytes::from_static(b"{}"),
        timestamp_ms: 7,
        qos: Qos::AtLeastOnce,
        ..Message::default()
    };
    assert_eq!(outputs.as_slice(), [expected]);
}

/// Each flaw fails the call as `invalid` with the lift's reason, without
/// the host reserving room by a count it was given (u32::MAX outputs would
/// be hundreds of GiB) or copying without end, and the host then runs a
/// well-formed plugin as before.
#[test]
fn bad_discriminants_misaligned_lists_huge_counts_and_header_floods_fail_the_call() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = WasmHost::new(None).expect("wasm engine");
    let result_tag = RESULTS;
    let first = MESSAGES;
    let cases = [
        (
            "a result that is neither ok nor err",
            Image::ok(message()).patch(result_tag, &[2]),
            "invalid variant discriminant: 2",
        ),
        (
            "an option that is neither none nor some",
            Image::ok(message()).patch(first + KAFKA_TOPIC as u32, &[9]),
            "invalid option discriminant: 9",
        ),
        (
            "a qos past the enum's three cases",
            Image::ok(message()).patch(first + QOS as u32, &[3]),
            "unexpected discriminant: 3",
        ),
        (
            "outputs at an address not aligned to 8",
            Image::ok(message()).patch(result_tag + 4, &(MESSAGES + 4).to_le_bytes()),
            "list pointer is not aligned",
        ),
        (
            "results at an address not aligned to 4",
            Image {
                results: (RESULTS + 2, 1),
                ..Image::ok(message())
            },
            "list pointer is not aligned",
        ),
        (
            // 2^28 + 1 headers of 16 bytes: 4 GiB and 16 bytes, more than a
            // 32-bit memory holds.
            "2^28 + 1 headers",
            Image::ok(message()).patch(first + HEADERS as u32 + 4, &0x1000_0001u32.to_le_bytes()),
            "list pointer/length out of bounds of memory",
        ),
        (
            "u32::MAX outputs",
            Image::ok(message()).patch(result_tag + 8, &u32::MAX.to_le_bytes()),
            "list pointer/length out of bounds of memory",
        ),
        (
            "u32::MAX results",
            Image {
                results: (RESULTS, u32::MAX),
                ..Image::ok(message())
            },
            // Counted, and not lifted, before anything is reserved for them.
            "plugin returned 4294967295 results for a batch of 1 messages",
        ),
        (
            // The second result is zeros: `ok` with no outputs.
            "two results for one message",
            Image {
                results: (RESULTS, 2),
                ..Image::ok(message())
            },
            "plugin returned 2 results for a batch of 1 messages",
        ),
        (
            // 1000 outputs (limits.max_outputs) sharing one list of 65,536
            // empty headers: 1000 MiB of header records to read out of
            // 1 MiB, and no bytes that limits.max_output_bytes counts.
            // wasmtime's budget for copying records in one call stops it.
            "1000 outputs sharing 65,536 headers",
            Image::ok({
                let mut m = message();
                put(&mut m, HEADERS, BIG);
                put(&mut m, HEADERS + 4, BIG_LEN / 16);
                m.repeat(1000)
            }),
            "too much data is being copied between the host and the guest",
        ),
    ];
    let valid = transform(component(dir.path(), "valid", &Image::ok(message())), "{}");
    let valid = host.load(&valid).map(|p| (p, valid)).expect("valid plugin");
    for (i, (flaw, image, reason)) in cases.into_iter().enumerate() {
        let t = transform(component(dir.path(), &format!("flaw-{i}"), &image), "{}");
        let loaded = host.load(&t).expect("the component loads");
        let mut instance = Instance::new(&loaded, "abi", &t).expect("init");
        let err = match instance.process(&[input()]) {
            Ok(processed) => panic!("{flaw}: the call succeeded: {:?}", processed.results),
            Err(err) => err,
        };
        println!("{flaw}: {} ({})", err.reason, err.kind);
        assert_eq!(err.kind, "invalid", "{flaw}");
        assert!(err.reason.contains(reason), "{flaw}: {}", err.reason);

        let mut fresh = Instance::new(&valid.0, "abi", &valid.1).expect("init");
        let processed = fresh.process(&[input()]).expect("a clean call");
        assert!(processed.results[0].is_ok(), "{flaw}");
    }
}

/// A batch whose outputs together are more than wasmtime's default budget
/// for copying out of a guest in one call (128 MiB), each within its
/// limits, goes through whole: 150 messages of 1 MiB through a plugin that
/// passes them on.
#[test]
fn a_batch_of_150_mib_within_its_limits_goes_through() {
    let host = WasmHost::new(None).expect("wasm engine");
    let mut t = transform(
        sluice_tests::plugin("malformed"),
        r#"{"mode": "out-of-bounds"}"#,
    );
    t.limits.memory_mb = 1024;
    // Copying 300 MiB in and out in a debug build, next to other tests,
    // can take more than the default second.
    t.limits.timeout_ms = 60_000;
    let loaded = host.load(&t).expect("malformed plugin");
    let mut instance = Instance::new(&loaded, "abi", &t).expect("init");
    let batch: Vec<Message> = (0..150u8)
        .map(|i| Message {
            payload: Bytes::from(vec![i; 1 << 20]),
            ..input()
        })
        .collect();
    let processed = instance.process(&batch).expect("the call");
    assert_eq!(processed.over_limit, 0);
    for (input, result) in batch.iter().zip(&processed.results) {
        let outputs = result.as_ref().expect("passed on");
        assert_eq!(outputs.as_slice(), std::slice::from_ref(input));
    }
}

/// An input whose outputs break `limits.max_outputs` or
/// `limits.max_output_bytes` fails alone, found so from the results'
/// counts and lengths before any of its outputs is copied, and the other
/// inputs of the batch go through. The over-limit outputs have a topic
/// that is not UTF-8 and payloads that are all the same MiB of guest
/// memory: a host that copied them first would fail the whole call as
/// malformed. The bytes counted are those of the README (topic, Kafka
/// topic, key, payload, header names and values, content type), to the
/// byte.
#[test]
fn an_input_over_its_limits_fails_alone_before_its_outputs_are_copied() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = WasmHost::new(None).expect("wasm engine");
    // At TEXT: "out{}" (topic, payload), then the other fields' text and a
    // byte that is not UTF-8; one header record after them.
    let (kafka_topic, key, name, value, content_type, bad) =
        (TEXT + 5, TEXT + 6, TEXT + 8, TEXT + 9, TEXT + 11, TEXT + 13);
    let header = TEXT + 0x100;
    let mut full = message();
    full[KAFKA_TOPIC] = 1;
    put(&mut full, KAFKA_TOPIC + 4, kafka_topic);
    put(&mut full, KAFKA_TOPIC + 8, 1);
    full[KEY] = 1;
    put(&mut full, KEY + 4, key);
    put(&mut full, KEY + 8, 2);
    put(&mut full, HEADERS, header);
    put(&mut full, HEADERS + 4, 1);
    full[CONTENT_TYPE] = 1;
    put(&mut full, CONTENT_TYPE + 4, content_type);
    put(&mut full, CONTENT_TYPE + 8, 2);
    // 3 + 1 + 2 + 2 + (1 + 2) + 2 bytes.
    let full_bytes = 13;
    let mut aliased = message();
    put(&mut aliased, 0, bad);
    put(&mut aliased, 4, 1);
    put(&mut aliased, PAYLOAD, BIG);
    put(&mut aliased, PAYLOAD + 4, BIG_LEN);

    // Records: 200 aliased outputs, then 2 full ones.
    let mut records = aliased.repeat(200);
    records.extend(full.repeat(2));
    let fulls = MESSAGES + 200 * MESSAGE_SIZE;
    let mut image = Image::ok(records).with_results(&[
        (0, MESSAGES, 200),
        (0, fulls, 1),
        (0, MESSAGES, 2),
        (0, fulls, 2),
    ]);
    image.data.push((TEXT + 5, b"kkkhvvct\xff".to_vec()));
    let mut record = vec![0; 16];
    put(&mut record, 0, name);
    put(&mut record, 4, 1);
    put(&mut record, 8, value);
    put(&mut record, 12, 2);
    image.data.push((header, record));

    let mut t = transform(component(dir.path(), "over-limit", &image), "{}");
    t.limits.max_outputs = 100;
    t.limits.max_output_bytes = full_bytes;
    let loaded = host.load(&t).expect("the component loads");
    let mut instance = Instance::new(&loaded, "abi", &t).expect("init");
    let batch = [input(), input(), input(), input()];
    let processed = instance.process(&batch).expect("the call");
    let reasons: Vec<_> = processed
        .results
        .iter()
        .map(|r| r.as_ref().map(|o| o.len()).map_err(String::as_str))
        .collect();
    println!("{reasons:?}");
    let over = |bytes: u64| {
        format!("plugin returned {bytes} bytes for one input, more than limits.max_output_bytes ({full_bytes})")
    };
    assert_eq!(
        reasons,
        [
            Err("plugin returned 200 messages for one input, more than limits.max_outputs (100)"),
            Ok(1),
            Err(over(2 * (1 + u64::from(BIG_LEN))).as_str()),
            Err(over(2 * full_bytes).as_str()),
        ]
    );
    assert_eq!(processed.over_limit, 3);
    let out = &processed.results[1].as_ref().expect("ok")[0];
    assert_eq!(
        (
            out.kafka_topic.as_deref(),
            out.key.as_deref(),
            &out.headers[..],
            out.content_type.as_deref()
        ),
        (
            Some("k"),
            Some(&b"kk"[..]),
            &[("h".to_string(), "vv".to_string())][..],
            Some("ct")
        )
    );
}

/// Headers that `limits.max_output_bytes` counts as nothing (empty names and
/// values) are capped at 2 Mi for the outputs of one call, whatever the
/// host-call fuel would allow (here raised by `max_outputs: 100000`): 36
/// outputs sharing one list of 65,536 headers are 2,359,296, which fail the
/// call as malformed.
#[test]
fn more_than_2_mi_headers_in_one_call_fail_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = WasmHost::new(None).expect("wasm engine");
    let mut m = message();
    put(&mut m, HEADERS, BIG);
    put(&mut m, HEADERS + 4, BIG_LEN / 16);
    let image = Image::ok(m.repeat(36));
    let mut t = transform(component(dir.path(), "headers", &image), "{}");
    t.limits.max_outputs = 100_000;
    let loaded = host.load(&t).expect("the component loads");
    let mut instance = Instance::new(&loaded, "abi", &t).expect("init");
    let err = match instance.process(&[input()]) {
        Ok(processed) => panic!("the call succeeded: {} results", processed.results.len()),
        Err(err) => err,
    };
    assert_eq!(err.kind, "invalid");
    assert_eq!(
        err.reason,
        "plugin returned malformed results: more than 2097152 headers in the results of one call"
    );
}
