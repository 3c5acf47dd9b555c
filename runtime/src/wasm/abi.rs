//! A `process` call's batch lowered into the guest, and its results lifted
//! out, each in one pass.
//!
//! `bindgen!`'s `call_process` lowers `list<message>` with wasmtime's
//! generic code, which looks the guest's memory up again for every value it
//! writes: 17 times for a message with a topic and a payload, besides the
//! guest allocations themselves (a perf profile of the json-map benchmark
//! had that look-up alone at 4 % of a batch's time). [`Batch`] makes the
//! same guest allocations (`cabi_realloc` calls) that the canonical ABI
//! prescribes, in the same order and with the same sizes and alignments,
//! then writes every record and copies every string and list with one
//! look-up for the whole batch.
//!
//! [`Results`] likewise lifts `list<result<list<message>, transform-error>>`
//! straight into the host's [`Message`]s, with the checks wasmtime makes
//! (bounds, alignment, discriminants, UTF-8, its host-call fuel), instead
//! of into `bindgen!`'s records first, one `Vec` per input, and converting
//! those. It also checks the number of results against the batch's, and
//! each input's outputs against `limits.max_outputs` and
//! `limits.max_output_bytes`, from their counts and lengths before copying
//! anything, so the fuel pays only for records and error texts: what a
//! batch may bring out is bounded by the limits, not by the fuel (see
//! `hostcall_fuel` in the parent module).
//!
//! The field layout below is the canonical ABI's for `message` and `header`
//! in `wit/transform.wit`; a unit test derives it from wasmtime's own
//! layout rules, and `tests/offline.rs` checks that every field of every
//! kind of message reaches a plugin intact. Guests whose strings are not
//! UTF-8 (a component may ask for UTF-16) take wasmtime's generic code,
//! which pays fuel for every byte and is checked against the limits after
//! copying.

use std::cell::Cell;
use std::mem::MaybeUninit;

use bytes::Bytes;
use wasmtime::component::__internal::wasmtime_environ::component::StringEncoding;
use wasmtime::component::__internal::{
    CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext, LowerContext,
};
use wasmtime::component::{ComponentType, Lift, Lower};
use wasmtime::ValRaw;

use super::chain::Outputs;
use super::{check_output_bytes, check_output_count, output_bytes, truncate, wit};
use crate::config::Limits;
use crate::message::{Message, Qos};

/// `message`: size and alignment of one record, and its fields' offsets.
pub(super) const MESSAGE_SIZE: usize = 72;
const MESSAGE_ALIGN: u32 = 8;
const TOPIC: usize = 0;
const KAFKA_TOPIC: usize = 8;
const KEY: usize = 20;
const PAYLOAD: usize = 32;
const HEADERS: usize = 40;
const TIMESTAMP: usize = 48;
const QOS: usize = 56;
const RETAIN: usize = 57;
const CONTENT_TYPE: usize = 60;
/// Where an `option<string>` or `option<list<u8>>` keeps its pointer pair,
/// after its one-byte tag.
const OPTION_PAYLOAD: usize = 4;
/// `header`: size and alignment, and the offset of `value`.
const HEADER_SIZE: usize = 16;
const HEADER_ALIGN: u32 = 4;
const HEADER_VALUE: usize = 8;
/// `result<list<message>, transform-error>`: size and alignment of one,
/// and where its payload (a list, or the error's string) starts.
pub(super) const RESULT_SIZE: usize = 12;
const RESULT_ALIGN: u32 = 4;
const RESULT_PAYLOAD: usize = 4;
/// The longest string the canonical ABI can pass (wasmtime's limit).
const MAX_STRING: usize = (1 << 31) - 1;
/// Most headers the outputs of one call may carry together: 2 Mi, about
/// 100 MB on the host (48 bytes each when empty, which
/// `limits.max_output_bytes` counts as nothing).
pub(super) const MAX_HEADERS: usize = 2 << 20;

/// The `batch` argument of `process`, lowered straight from the host's
/// messages.
pub(super) struct Batch<'a>(pub &'a [Message]);

// SAFETY: `Lower` is two `ValRaw`s (pointer and length), as for every
// list; `typecheck` is the one of wasmtime's own `[MessageParam]`, whose
// canonical layout the writes below follow.
unsafe impl ComponentType for Batch<'_> {
    type Lower = [ValRaw; 2];

    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <[wit::MessageParam<'static>] as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: every write goes through bounds-checked slices of the guest's
// memory, into regions its `cabi_realloc` returned (and wasmtime checked).
unsafe impl Lower for Batch<'_> {
    fn linear_lower_to_flat<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        dst: &mut MaybeUninit<[ValRaw; 2]>,
    ) -> wasmtime::Result<()> {
        if !utf8(&cx.options().string_encoding) {
            return self.generic(|params| params.linear_lower_to_flat(cx, ty, dst));
        }
        let (ptr, len) = self.store(cx)?;
        dst.write([ValRaw::i64(ptr as i64), ValRaw::i64(len as i64)]);
        Ok(())
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        if !utf8(&cx.options().string_encoding) {
            return self.generic(|params| params.linear_lower_to_memory(cx, ty, offset));
        }
        let (ptr, len) = self.store(cx)?;
        let mem = cx.as_slice_mut();
        put_u32(mem, offset, ptr)?;
        put_u32(mem, offset + 4, len)
    }
}

impl Batch<'_> {
    /// Hands wasmtime's generic lowering the `bindgen!` view of the batch.
    fn generic<R>(&self, lower: impl FnOnce(&[wit::MessageParam<'_>]) -> R) -> R {
        let headers: Vec<_> = self.0.iter().map(headers_to_wit).collect();
        let params: Vec<_> = self
            .0
            .iter()
            .zip(&headers)
            .map(|(m, h)| to_wit(m, h))
            .collect();
        lower(&params)
    }

    /// Allocates everything in the guest (in the canonical ABI's order),
    /// then writes it; returns the list's pointer and length.
    fn store<T>(&self, cx: &mut LowerContext<'_, T>) -> wasmtime::Result<(usize, usize)> {
        let messages = self.0;
        let array = cx.realloc(
            0,
            0,
            MESSAGE_ALIGN,
            array_size(messages.len(), MESSAGE_SIZE)?,
        )?;
        // The guest address of every string and list, in allocation order;
        // a realloc may grow (move) memory, so nothing is written yet.
        let mut at = Vec::with_capacity(messages.len() * 4);
        for m in messages {
            at.push(alloc(cx, &m.topic)?);
            if let Some(t) = &m.kafka_topic {
                at.push(alloc(cx, t)?);
            }
            if let Some(k) = &m.key {
                at.push(alloc(cx, k)?);
            }
            at.push(alloc(cx, &m.payload)?);
            let size = array_size(m.headers.len(), HEADER_SIZE)?;
            at.push(cx.realloc(0, 0, HEADER_ALIGN, size)?);
            for (name, value) in &m.headers {
                at.push(alloc(cx, name)?);
                at.push(alloc(cx, value)?);
            }
            if let Some(c) = &m.content_type {
                at.push(alloc(cx, c)?);
            }
        }

        let mem = cx.as_slice_mut();
        let mut at = at.into_iter();
        let mut next = || {
            at.next()
                .ok_or_else(|| wasmtime::format_err!("lowering out of step"))
        };
        for (i, m) in messages.iter().enumerate() {
            let mut rec = [0u8; MESSAGE_SIZE];
            copy(mem, &mut rec, TOPIC, next()?, m.topic.as_bytes())?;
            if let Some(t) = &m.kafka_topic {
                copy_some(mem, &mut rec, KAFKA_TOPIC, next()?, t.as_bytes())?;
            }
            if let Some(k) = &m.key {
                copy_some(mem, &mut rec, KEY, next()?, k)?;
            }
            copy(mem, &mut rec, PAYLOAD, next()?, &m.payload)?;
            let headers = next()?;
            pair(&mut rec, HEADERS, headers, m.headers.len());
            for (j, (name, value)) in m.headers.iter().enumerate() {
                let mut h = [0u8; HEADER_SIZE];
                copy(mem, &mut h, 0, next()?, name.as_bytes())?;
                copy(mem, &mut h, HEADER_VALUE, next()?, value.as_bytes())?;
                region(mem, headers + j * HEADER_SIZE, HEADER_SIZE)?.copy_from_slice(&h);
            }
            rec[TIMESTAMP..TIMESTAMP + 8].copy_from_slice(&m.timestamp_ms.to_le_bytes());
            rec[QOS] = match m.qos {
                Qos::AtMostOnce => 0,
                Qos::AtLeastOnce => 1,
                Qos::ExactlyOnce => 2,
            };
            rec[RETAIN] = u8::from(m.retain);
            if let Some(c) = &m.content_type {
                copy_some(mem, &mut rec, CONTENT_TYPE, next()?, c.as_bytes())?;
            }
            region(mem, array + i * MESSAGE_SIZE, MESSAGE_SIZE)?.copy_from_slice(&rec);
        }
        Ok((array, messages.len()))
    }
}

/// `bindgen!`'s view of what `process` returns.
type WitResults = Vec<Result<Vec<wit::MessageResult>, wit::TransformError>>;

/// What `process` returned: one result per input, its outputs or why it
/// failed (the guest's error text, or the limit its outputs break).
pub(super) struct Results {
    /// How many results the guest returned. When that is not the batch's
    /// size, none of them is lifted and `results` is empty.
    pub returned: usize,
    pub results: Vec<Result<Outputs, String>>,
    /// How many inputs failed because their outputs break
    /// `limits.max_outputs` or `limits.max_output_bytes`.
    pub over_limit: usize,
}

/// What lifting [`Results`] needs from the call it belongs to: the
/// instance's limits and the batch's size.
#[derive(Clone, Copy)]
pub(super) struct Expect {
    pub limits: Limits,
    pub batch: usize,
}

thread_local! {
    /// What the call whose results this thread is lifting expects
    /// (wasmtime's `Lift` has no way to pass it in); see [`lift_with`].
    static EXPECT: Cell<Option<Expect>> = const { Cell::new(None) };
}

/// Runs `call`, which lifts [`Results`], with what it expects: results of
/// any other count are not lifted, and an input whose outputs break
/// `limits.max_outputs` or `limits.max_output_bytes` fails alone, found
/// so from the results' counts and lengths before any of its outputs is
/// copied.
pub(super) fn lift_with<R>(expect: Expect, call: impl FnOnce() -> R) -> R {
    /// Puts back what was there before, also if `call` unwinds.
    struct Restore(Option<Expect>);
    impl Drop for Restore {
        fn drop(&mut self) {
            EXPECT.set(self.0);
        }
    }
    let _restore = Restore(EXPECT.replace(Some(expect)));
    call()
}

fn expected() -> wasmtime::Result<Expect> {
    EXPECT
        .get()
        .ok_or_else(|| wasmtime::format_err!("results lifted outside `abi::lift_with`"))
}

// SAFETY: `Lower` is two `ValRaw`s (pointer and length), as for every
// list; `typecheck` is the one of wasmtime's own `WitResults`, whose
// canonical layout the reads below follow.
unsafe impl ComponentType for Results {
    type Lower = [ValRaw; 2];

    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <WitResults as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: every read goes through bounds-checked slices of guest memory.
unsafe impl Lift for Results {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &[ValRaw; 2],
    ) -> wasmtime::Result<Self> {
        if !utf8(&cx.options().string_encoding) {
            return WitResults::linear_lift_from_flat(cx, ty, src)
                .and_then(Self::from_wit)
                .map_err(Malformed::wrap);
        }
        Self::lift(cx, src[0].get_u32() as usize, src[1].get_u32() as usize)
            .map_err(Malformed::wrap)
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        if !utf8(&cx.options().string_encoding) {
            return WitResults::linear_lift_from_memory(cx, ty, bytes)
                .and_then(Self::from_wit)
                .map_err(Malformed::wrap);
        }
        pointer_pair(bytes, 0)
            .and_then(|(ptr, len)| Self::lift(cx, ptr, len))
            .map_err(Malformed::wrap)
    }
}

/// Why a plugin's results could not be lifted: they break the canonical
/// ABI (a pointer or length outside the guest's memory, a misaligned list,
/// a bad discriminant, a string that is not UTF-8) or exceed wasmtime's
/// host-call fuel. No well-behaved guest returns such results; the host
/// counts them as `invalid`, like a wrong number of results.
#[derive(Debug)]
pub struct Malformed(String);

impl Malformed {
    fn wrap(e: wasmtime::Error) -> wasmtime::Error {
        wasmtime::Error::new(Malformed(e.to_string()))
    }
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin returned malformed results: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

impl Results {
    /// `returned` results, not the batch's count: none is lifted.
    fn not_lifted(returned: usize) -> Self {
        Results {
            returned,
            results: Vec::new(),
            over_limit: 0,
        }
    }

    fn from_wit(results: WitResults) -> wasmtime::Result<Self> {
        let Expect { limits, batch } = expected()?;
        let returned = results.len();
        if returned != batch {
            return Ok(Self::not_lifted(returned));
        }
        let mut over_limit = 0;
        let results = results
            .into_iter()
            .map(|r| match r {
                Ok(msgs) => {
                    let outputs: Outputs = msgs.into_iter().map(from_wit).collect();
                    let checked =
                        check_output_count(outputs.len() as u64, &limits).and_then(|()| {
                            check_output_bytes(outputs.iter().map(output_bytes).sum(), &limits)
                        });
                    over_limit += usize::from(checked.is_err());
                    checked.map(|()| outputs)
                }
                Err(e) => Err(truncate(&e.message)),
            })
            .collect();
        Ok(Results {
            returned,
            results,
            over_limit,
        })
    }

    /// Lifts the list of `len` results at guest address `ptr`. Records (of
    /// results, outputs and headers) and error texts are paid for with
    /// host-call fuel; the outputs' strings and bytes are bounded by the
    /// limits instead, checked before they are copied.
    fn lift(cx: &mut LiftContext<'_>, ptr: usize, len: usize) -> wasmtime::Result<Self> {
        let Expect { limits, batch } = expected()?;
        if len != batch {
            return Ok(Self::not_lifted(len));
        }
        let mem = cx.memory();
        let all = array(cx, ptr, len, RESULT_SIZE, RESULT_ALIGN)?;
        let mut results = Vec::with_capacity(len);
        let mut over_limit = 0;
        let mut headers_left = MAX_HEADERS;
        for result in all.chunks_exact(RESULT_SIZE) {
            let (at, n) = pointer_pair(result, RESULT_PAYLOAD)?;
            results.push(match result[0] {
                0 => match outputs_within(cx, mem, at, n, &limits)? {
                    Err(reason) => {
                        over_limit += 1;
                        Err(reason)
                    }
                    Ok(records) => {
                        let mut outputs = Outputs::with_capacity(n);
                        for rec in records.chunks_exact(MESSAGE_SIZE) {
                            outputs.push(lift_message(mem, rec, &mut headers_left)?);
                        }
                        Ok(outputs)
                    }
                },
                1 => Err(string(cx, mem, at, n)?),
                d => wasmtime::bail!("invalid variant discriminant: {d}"),
            });
        }
        Ok(Results {
            returned: len,
            results,
            over_limit,
        })
    }
}

/// The `n` output records at guest address `at` if they are within
/// `limits` (`Ok(Err(reason))` if not), counted from the records alone.
fn outputs_within<'a>(
    cx: &mut LiftContext<'a>,
    mem: &'a [u8],
    at: usize,
    n: usize,
    limits: &Limits,
) -> wasmtime::Result<Result<&'a [u8], String>> {
    if let Err(reason) = check_output_count(n as u64, limits) {
        // Checked, but neither paid for nor read.
        slice(mem, at, n, MESSAGE_SIZE, MESSAGE_ALIGN)?;
        return Ok(Err(reason));
    }
    let records = array(cx, at, n, MESSAGE_SIZE, MESSAGE_ALIGN)?;
    let mut bytes = 0u64;
    for rec in records.chunks_exact(MESSAGE_SIZE) {
        bytes = bytes.saturating_add(message_bytes(cx, mem, rec)?);
    }
    Ok(check_output_bytes(bytes, limits).map(|()| records))
}

/// The bytes of the output record `rec` that `limits.max_output_bytes`
/// counts (as [`output_bytes`] does for a host message), from its lengths,
/// each checked to lie inside the guest's memory. Pays for its header
/// records, which bounds how many it reads.
fn message_bytes(cx: &mut LiftContext<'_>, mem: &[u8], rec: &[u8]) -> wasmtime::Result<u64> {
    let string = |(at, n)| span(mem, at, n, "string");
    let list = |(at, n)| span(mem, at, n, "list");
    // Each term is below 2^32: these five cannot overflow.
    let mut bytes = string(pointer_pair(rec, TOPIC)?)?
        + option(rec, KAFKA_TOPIC)?.map_or(Ok(0), string)?
        + option(rec, KEY)?.map_or(Ok(0), list)?
        + list(pointer_pair(rec, PAYLOAD)?)?
        + option(rec, CONTENT_TYPE)?.map_or(Ok(0), string)?;
    let (at, n) = pointer_pair(rec, HEADERS)?;
    for h in array(cx, at, n, HEADER_SIZE, HEADER_ALIGN)?.chunks_exact(HEADER_SIZE) {
        let header = string(pointer_pair(h, 0)?)? + string(pointer_pair(h, HEADER_VALUE)?)?;
        bytes = bytes.saturating_add(header);
    }
    Ok(bytes)
}

/// `n`, if the `n` bytes at guest address `at` lie inside the guest's
/// memory (`what` names them in the error).
fn span(mem: &[u8], at: usize, n: usize, what: &str) -> wasmtime::Result<u64> {
    match at.checked_add(n) {
        Some(end) if end <= mem.len() => Ok(n as u64),
        _ => wasmtime::bail!("{what} pointer/length out of bounds of memory"),
    }
}

/// Lifts the `message` record `rec`, whose size [`message_bytes`] checked;
/// its headers count against `headers_left`.
fn lift_message(mem: &[u8], rec: &[u8], headers_left: &mut usize) -> wasmtime::Result<Message> {
    let (at, n) = pointer_pair(rec, TOPIC)?;
    let topic = text(mem, at, n)?;
    let kafka_topic = option(rec, KAFKA_TOPIC)?
        .map(|(at, n)| text(mem, at, n))
        .transpose()?;
    let key = option(rec, KEY)?
        .map(|(at, n)| list_u8(mem, at, n))
        .transpose()?;
    let (at, n) = pointer_pair(rec, PAYLOAD)?;
    let payload = list_u8(mem, at, n)?;
    let (at, n) = pointer_pair(rec, HEADERS)?;
    *headers_left = headers_left.checked_sub(n).ok_or_else(|| {
        wasmtime::format_err!("more than {MAX_HEADERS} headers in the results of one call")
    })?;
    let records = slice(mem, at, n, HEADER_SIZE, HEADER_ALIGN)?;
    let mut headers = Vec::with_capacity(n);
    for h in records.chunks_exact(HEADER_SIZE) {
        let (name, name_len) = pointer_pair(h, 0)?;
        let (value, value_len) = pointer_pair(h, HEADER_VALUE)?;
        headers.push((text(mem, name, name_len)?, text(mem, value, value_len)?));
    }
    let mut timestamp = [0; 8];
    timestamp.copy_from_slice(&rec[TIMESTAMP..TIMESTAMP + 8]);
    let qos = match rec[QOS] {
        0 => Qos::AtMostOnce,
        1 => Qos::AtLeastOnce,
        2 => Qos::ExactlyOnce,
        d => wasmtime::bail!("unexpected discriminant: {d}"),
    };
    let content_type = option(rec, CONTENT_TYPE)?
        .map(|(at, n)| text(mem, at, n))
        .transpose()?;
    Ok(Message {
        topic,
        kafka_topic,
        key,
        payload,
        headers,
        timestamp_ms: u64::from_le_bytes(timestamp),
        qos,
        retain: rec[RETAIN] != 0,
        content_type,
    })
}

/// The pointer and length at `field` of `rec`.
fn pointer_pair(rec: &[u8], field: usize) -> wasmtime::Result<(usize, usize)> {
    let word = |at: usize| -> wasmtime::Result<usize> {
        let bytes = rec
            .get(at..at + 4)
            .ok_or_else(|| wasmtime::format_err!("record too short"))?;
        let mut word = [0; 4];
        word.copy_from_slice(bytes);
        Ok(u32::from_le_bytes(word) as usize)
    };
    Ok((word(field)?, word(field + 4)?))
}

/// The pointer pair of the `option` at `field` of `rec`, if it is `some`.
fn option(rec: &[u8], field: usize) -> wasmtime::Result<Option<(usize, usize)>> {
    match rec[field] {
        0 => Ok(None),
        1 => pointer_pair(rec, field + OPTION_PAYLOAD).map(Some),
        d => wasmtime::bail!("invalid option discriminant: {d}"),
    }
}

/// The `n` elements of `size` bytes at guest address `at`, checked as
/// wasmtime checks a list: in bounds, aligned, and paid for with host-call
/// fuel.
fn array<'a>(
    cx: &mut LiftContext<'a>,
    at: usize,
    n: usize,
    size: usize,
    align: u32,
) -> wasmtime::Result<&'a [u8]> {
    let bytes = slice(cx.memory(), at, n, size, align)?;
    cx.consume_fuel(bytes.len())?;
    Ok(bytes)
}

/// Like [`array`], without paying for it.
fn slice(mem: &[u8], at: usize, n: usize, size: usize, align: u32) -> wasmtime::Result<&[u8]> {
    let bytes = n
        .checked_mul(size)
        .and_then(|len| mem.get(at..at.checked_add(len)?))
        .ok_or_else(|| wasmtime::format_err!("list pointer/length out of bounds of memory"))?;
    if !at.is_multiple_of(align as usize) {
        wasmtime::bail!("list pointer is not aligned");
    }
    Ok(bytes)
}

/// A transform error's text: the UTF-8 string of `n` bytes at guest
/// address `at`, paid for with host-call fuel, of which only what
/// [`truncate`] keeps is copied.
fn string(cx: &mut LiftContext<'_>, mem: &[u8], at: usize, n: usize) -> wasmtime::Result<String> {
    let s = str_at(mem, at, n)?;
    cx.consume_fuel(n)?;
    Ok(truncate(s))
}

/// The UTF-8 string of `n` bytes at guest address `at`.
fn text(mem: &[u8], at: usize, n: usize) -> wasmtime::Result<String> {
    str_at(mem, at, n).map(str::to_owned)
}

fn str_at(mem: &[u8], at: usize, n: usize) -> wasmtime::Result<&str> {
    let bytes = mem
        .get(at..at.saturating_add(n))
        .ok_or_else(|| wasmtime::format_err!("string pointer/length out of bounds of memory"))?;
    Ok(std::str::from_utf8(bytes)?)
}

/// The `list<u8>` of `n` bytes at guest address `at`.
fn list_u8(mem: &[u8], at: usize, n: usize) -> wasmtime::Result<Bytes> {
    slice(mem, at, n, 1, 1).map(Bytes::copy_from_slice)
}

/// Whether the guest takes strings as UTF-8, the host's encoding (from its
/// canonical options, `cx.options().string_encoding`).
fn utf8(encoding: &StringEncoding) -> bool {
    matches!(encoding, StringEncoding::Utf8)
}

/// `n` elements of `size` bytes, as a guest allocation size.
fn array_size(n: usize, size: usize) -> wasmtime::Result<usize> {
    n.checked_mul(size)
        .filter(|s| u32::try_from(*s).is_ok())
        .ok_or_else(|| {
            wasmtime::format_err!("a list of {n} elements is too large to copy into wasm")
        })
}

/// Allocates room for `bytes` (a string or a `list<u8>`, both aligned to
/// 1) in the guest.
fn alloc<T>(cx: &mut LowerContext<'_, T>, bytes: impl AsRef<[u8]>) -> wasmtime::Result<usize> {
    let len = bytes.as_ref().len();
    if len > MAX_STRING {
        wasmtime::bail!("{len} bytes are too large to copy into wasm");
    }
    cx.realloc(0, 0, 1, len)
}

/// Copies `bytes` to guest address `to` and writes its pointer pair at
/// `field` of the record `rec`.
fn copy(
    mem: &mut [u8],
    rec: &mut [u8],
    field: usize,
    to: usize,
    bytes: &[u8],
) -> wasmtime::Result<()> {
    region(mem, to, bytes.len())?.copy_from_slice(bytes);
    pair(rec, field, to, bytes.len());
    Ok(())
}

/// Like [`copy`], for the `some` case of the `option` at `field` of `rec`.
fn copy_some(
    mem: &mut [u8],
    rec: &mut [u8],
    field: usize,
    to: usize,
    bytes: &[u8],
) -> wasmtime::Result<()> {
    rec[field] = 1;
    copy(mem, rec, field + OPTION_PAYLOAD, to, bytes)
}

/// Writes a pointer and a length (both fit in `u32`: they were checked
/// when allocated) at `field` of `rec`.
fn pair(rec: &mut [u8], field: usize, ptr: usize, len: usize) {
    rec[field..field + 4].copy_from_slice(&(ptr as u32).to_le_bytes());
    rec[field + 4..field + 8].copy_from_slice(&(len as u32).to_le_bytes());
}

fn put_u32(mem: &mut [u8], at: usize, value: usize) -> wasmtime::Result<()> {
    let value = u32::try_from(value)?;
    region(mem, at, 4)?.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// `len` bytes of guest memory from `at`, or an error if they are not all
/// inside it.
fn region(mem: &mut [u8], at: usize, len: usize) -> wasmtime::Result<&mut [u8]> {
    let size = mem.len();
    mem.get_mut(at..at.saturating_add(len)).ok_or_else(|| {
        wasmtime::format_err!("{len} bytes at {at} are outside the guest's {size}-byte memory")
    })
}

// `bindgen!`'s view of host messages, for guests with other string
// encodings than UTF-8.

fn headers_to_wit(m: &Message) -> Vec<wit::HeaderParam<'_>> {
    m.headers
        .iter()
        .map(|(name, value)| wit::HeaderParam { name, value })
        .collect()
}

/// The guest's view of `m`, borrowing everything (lowered into the guest
/// without an intermediate copy).
fn to_wit<'a>(m: &'a Message, headers: &'a [wit::HeaderParam<'a>]) -> wit::MessageParam<'a> {
    wit::MessageParam {
        topic: &m.topic,
        kafka_topic: m.kafka_topic.as_deref(),
        key: m.key.as_deref(),
        payload: &m.payload,
        headers,
        timestamp_ms: m.timestamp_ms,
        qos: match m.qos {
            Qos::AtMostOnce => wit::Qos::AtMostOnce,
            Qos::AtLeastOnce => wit::Qos::AtLeastOnce,
            Qos::ExactlyOnce => wit::Qos::ExactlyOnce,
        },
        retain: m.retain,
        content_type: m.content_type.as_deref(),
    }
}

fn from_wit(m: wit::MessageResult) -> Message {
    Message {
        topic: m.topic,
        kafka_topic: m.kafka_topic,
        key: m.key.map(Into::into),
        payload: m.payload.into(),
        headers: m.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        timestamp_ms: m.timestamp_ms,
        qos: match m.qos {
            wit::Qos::AtMostOnce => Qos::AtMostOnce,
            wit::Qos::AtLeastOnce => Qos::AtLeastOnce,
            wit::Qos::ExactlyOnce => Qos::ExactlyOnce,
        },
        retain: m.retain,
        content_type: m.content_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets above, derived field by field with wasmtime's own
    /// layout rules from the `bindgen!` types of the WIT records.
    #[test]
    fn the_layout_is_the_canonical_abis() {
        let mut offset = 0;
        let fields = [
            <&str as ComponentType>::ABI,
            <Option<&str> as ComponentType>::ABI,
            <Option<&[u8]> as ComponentType>::ABI,
            <&[u8] as ComponentType>::ABI,
            <&[wit::HeaderParam<'static>] as ComponentType>::ABI,
            <u64 as ComponentType>::ABI,
            <wit::Qos as ComponentType>::ABI,
            <bool as ComponentType>::ABI,
            <Option<&str> as ComponentType>::ABI,
        ]
        .map(|abi| abi.next_field32_size(&mut offset));
        assert_eq!(
            fields,
            [
                TOPIC,
                KAFKA_TOPIC,
                KEY,
                PAYLOAD,
                HEADERS,
                TIMESTAMP,
                QOS,
                RETAIN,
                CONTENT_TYPE
            ]
        );
        type M = wit::MessageParam<'static>;
        type H = wit::HeaderParam<'static>;
        assert_eq!((M::SIZE32, M::ALIGN32), (MESSAGE_SIZE, MESSAGE_ALIGN));
        assert_eq!((H::SIZE32, H::ALIGN32), (HEADER_SIZE, HEADER_ALIGN));
        assert_eq!(<Option<&str> as ComponentType>::SIZE32, 12);
        let mut at = 0;
        let tag = CanonicalAbiInfo::SCALAR1.next_field32_size(&mut at);
        let payload = <&str as ComponentType>::ABI.next_field32_size(&mut at);
        assert_eq!((tag, payload), (0, OPTION_PAYLOAD));
        let mut at = 0;
        let name = <&str as ComponentType>::ABI.next_field32_size(&mut at);
        let value = <&str as ComponentType>::ABI.next_field32_size(&mut at);
        assert_eq!((name, value), (0, HEADER_VALUE));
    }
}
