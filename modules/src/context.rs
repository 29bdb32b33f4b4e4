//! The context a module sees, and the host functions of `em_api` that read
//! and change it. The functions never unwind into C: each one catches a
//! panic and reports failure instead.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::strings::{self, EmString, EmStringVector};

/// What a module can see and change about a session or a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleContext {
    /// Session ID during reception, queue ID during delivery.
    pub id: String,
    pub sender: String,
    pub recipients: Vec<String>,
    /// The message content (only for the Data and delivery events).
    pub data: Vec<u8>,
    pub metadata: BTreeMap<String, String>,
    pub client_address: String,
    /// The reply a rejecting module asked for: (code, text).
    pub response: Option<(u16, String)>,
}

/// `em_api` in empath.h.
#[repr(C)]
pub struct EmApi {
    get_id: extern "C" fn(*const RawContext) -> EmString,
    get_sender: extern "C" fn(*const RawContext) -> EmString,
    set_sender: extern "C" fn(*mut RawContext, *const libc::c_char, usize) -> libc::c_int,
    get_recipients: extern "C" fn(*const RawContext) -> EmStringVector,
    add_recipient: extern "C" fn(*mut RawContext, *const libc::c_char, usize) -> libc::c_int,
    get_data: extern "C" fn(*const RawContext) -> EmString,
    get_metadata: extern "C" fn(*const RawContext, *const libc::c_char, usize) -> EmString,
    set_metadata: extern "C" fn(
        *mut RawContext,
        *const libc::c_char,
        usize,
        *const libc::c_char,
        usize,
    ) -> libc::c_int,
    get_client_address: extern "C" fn(*const RawContext) -> EmString,
    set_response:
        extern "C" fn(*mut RawContext, libc::c_int, *const libc::c_char, usize) -> libc::c_int,
}

/// `struct em_context`: the table first, as empath.h declares it, then the
/// host's data, which C never touches.
#[repr(C)]
pub struct RawContext {
    api: *const EmApi,
    context: *mut ModuleContext,
}

static API: EmApi = EmApi {
    get_id,
    get_sender,
    set_sender,
    get_recipients,
    add_recipient,
    get_data,
    get_metadata,
    set_metadata,
    get_client_address,
    set_response,
};

impl RawContext {
    /// A context for one callback; valid while `context` is borrowed.
    pub fn new(context: &mut ModuleContext) -> Self {
        Self {
            api: &raw const API,
            context,
        }
    }
}

/// Runs `f` on the context behind `raw`, or returns `fallback` if `raw` is
/// null or `f` panics.
fn with<T>(raw: *const RawContext, fallback: T, f: impl FnOnce(&mut ModuleContext) -> T) -> T {
    if raw.is_null() {
        return fallback;
    }
    // SAFETY: `raw` was made by RawContext::new and is only used during the
    // callback that received it, while the ModuleContext is borrowed.
    let context = unsafe { &mut *(*raw).context };
    catch_unwind(AssertUnwindSafe(|| f(context))).unwrap_or(fallback)
}

fn empty() -> EmString {
    strings::to_em_string(b"")
}

extern "C" fn get_id(raw: *const RawContext) -> EmString {
    with(raw, empty(), |c| strings::to_em_string(c.id.as_bytes()))
}

extern "C" fn get_sender(raw: *const RawContext) -> EmString {
    with(raw, empty(), |c| strings::to_em_string(c.sender.as_bytes()))
}

extern "C" fn set_sender(
    raw: *mut RawContext,
    value: *const libc::c_char,
    len: usize,
) -> libc::c_int {
    // SAFETY: the module passes a pointer valid for `len` bytes (empath.h contract).
    let value = unsafe { strings::from_module(value, len) };
    with(raw, -1, |c| {
        c.sender = value;
        0
    })
}

extern "C" fn get_recipients(raw: *const RawContext) -> EmStringVector {
    with(raw, strings::to_em_string_vector::<&[u8]>(&[]), |c| {
        strings::to_em_string_vector(&c.recipients)
    })
}

extern "C" fn add_recipient(
    raw: *mut RawContext,
    value: *const libc::c_char,
    len: usize,
) -> libc::c_int {
    // SAFETY: as for set_sender.
    let value = unsafe { strings::from_module(value, len) };
    if value.is_empty() {
        return -1;
    }
    with(raw, -1, |c| {
        c.recipients.push(value);
        0
    })
}

extern "C" fn get_data(raw: *const RawContext) -> EmString {
    with(raw, empty(), |c| strings::to_em_string(&c.data))
}

extern "C" fn get_metadata(
    raw: *const RawContext,
    key: *const libc::c_char,
    len: usize,
) -> EmString {
    // SAFETY: as for set_sender.
    let key = unsafe { strings::from_module(key, len) };
    with(raw, empty(), |c| {
        strings::to_em_string(
            c.metadata
                .get(&key)
                .map(String::as_bytes)
                .unwrap_or_default(),
        )
    })
}

extern "C" fn set_metadata(
    raw: *mut RawContext,
    key: *const libc::c_char,
    key_len: usize,
    value: *const libc::c_char,
    value_len: usize,
) -> libc::c_int {
    // SAFETY: as for set_sender.
    let (key, value) = unsafe {
        (
            strings::from_module(key, key_len),
            strings::from_module(value, value_len),
        )
    };
    if key.is_empty() {
        return -1;
    }
    with(raw, -1, |c| {
        c.metadata.insert(key, value);
        0
    })
}

extern "C" fn get_client_address(raw: *const RawContext) -> EmString {
    with(raw, empty(), |c| {
        strings::to_em_string(c.client_address.as_bytes())
    })
}

extern "C" fn set_response(
    raw: *mut RawContext,
    code: libc::c_int,
    text: *const libc::c_char,
    len: usize,
) -> libc::c_int {
    // SAFETY: as for set_sender.
    let text = unsafe { strings::from_module(text, len) };
    let Ok(code) = u16::try_from(code) else {
        return -1;
    };
    if !(200..600).contains(&code) {
        return -1;
    }
    // One line only: a module must not be able to inject SMTP replies.
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    with(raw, -1, |c| {
        c.response = Some((code, text));
        0
    })
}
