//! libempath.so: the `em_*` functions of `modules/include/empath.h`, which
//! plugin modules link with (`-lempath`).
//!
//! Each function forwards the call to the daemon that called the module,
//! through the table at the start of the module's `Context` (see
//! `empath_modules::abi`). The work is done there, once, for every daemon;
//! this library only gives modules symbols to link against. A null or
//! foreign context gets the empty answer (an empty string, false, 0).

use std::ffi::c_char;

use empath_modules::abi::{self, Context, FfiString, FfiStringVector, Flag, Text};
use empath_modules::strings;

/// The module API this library was built for; a daemon checks it when it
/// loads a module linked with this library.
#[unsafe(no_mangle)]
pub extern "C" fn em_library_api_version() -> u32 {
    abi::API_VERSION
}

/// A string field of the context.
fn text(context: *const Context, field: Text) -> FfiString {
    // SAFETY: modules pass the context they were given (empath.h).
    match unsafe { Context::host(context) } {
        // SAFETY: the table belongs to the daemon that made the context.
        Some(host) => unsafe { (host.text)(context, field as u32) },
        None => strings::empty(),
    }
}

fn flag(context: *const Context, flag: Flag) -> bool {
    // SAFETY: as in `text`.
    unsafe { Context::host(context).is_some_and(|host| (host.flag)(context, flag as u32)) }
}

/// # Safety
/// `context` is the one the module was given, during that callback.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_get_id(context: *const Context) -> FfiString {
    text(context, Text::Id)
}

/// # Safety
/// As for [`em_context_get_id`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_get_sender(context: *const Context) -> FfiString {
    text(context, Text::Sender)
}

/// # Safety
/// As for [`em_context_get_id`]; `sender` is null or a C string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_set_sender(
    context: *mut Context,
    sender: *const c_char,
) -> bool {
    // SAFETY: as in `text`.
    unsafe { Context::host(context).is_some_and(|host| (host.set_sender)(context, sender)) }
}

/// # Safety
/// As for [`em_context_get_id`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_get_recipients(context: *const Context) -> FfiStringVector {
    // SAFETY: as in `text`.
    match unsafe { Context::host(context) } {
        Some(host) => unsafe { (host.recipients)(context) },
        None => strings::to_ffi_vector::<&[u8]>(&[]),
    }
}

/// # Safety
/// As for [`em_context_set_sender`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_add_recipient(
    context: *mut Context,
    recipient: *const c_char,
) -> bool {
    // SAFETY: as in `text`.
    unsafe { Context::host(context).is_some_and(|host| (host.add_recipient)(context, recipient)) }
}

/// # Safety
/// As for [`em_context_get_id`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_get_data(context: *const Context) -> FfiString {
    text(context, Text::Data)
}

/// # Safety
/// As for [`em_context_get_id`]; `response` is null or a C string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_set_response(
    context: *mut Context,
    status: u32,
    response: *const c_char,
) -> bool {
    // SAFETY: as in `text`.
    unsafe {
        Context::host(context).is_some_and(|host| (host.set_response)(context, status, response))
    }
}

/// # Safety
/// As for [`em_context_get_id`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_is_tls(context: *const Context) -> bool {
    flag(context, Flag::Tls)
}

/// # Safety
/// As for [`em_context_get_id`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_tls_protocol(context: *const Context) -> FfiString {
    text(context, Text::TlsProtocol)
}

/// # Safety
/// As for [`em_context_get_id`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_tls_cipher(context: *const Context) -> FfiString {
    text(context, Text::TlsCipher)
}

/// # Safety
/// As for [`em_context_get_id`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_get_client_address(context: *const Context) -> FfiString {
    text(context, Text::ClientAddress)
}

/// # Safety
/// As for [`em_context_get_id`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_get_helo(context: *const Context) -> FfiString {
    text(context, Text::Helo)
}

/// # Safety
/// As for [`em_context_get_id`]; `key` is null or a C string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_exists(context: *const Context, key: *const c_char) -> bool {
    // SAFETY: as in `text`; a null value pointer asks only whether it is set.
    unsafe {
        Context::host(context)
            .is_some_and(|host| (host.metadata_get)(context, key, std::ptr::null_mut()))
    }
}

/// # Safety
/// As for [`em_context_exists`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_get(context: *const Context, key: *const c_char) -> FfiString {
    let mut value = FfiString {
        len: 0,
        data: std::ptr::null_mut(),
    };
    // SAFETY: as in `text`; the daemon writes `value` only when it is set.
    let found = unsafe {
        Context::host(context).is_some_and(|host| (host.metadata_get)(context, key, &raw mut value))
    };
    if found { value } else { strings::empty() }
}

/// # Safety
/// As for [`em_context_get_id`]; `key` and `value` are null or C strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_set(
    context: *mut Context,
    key: *const c_char,
    value: *const c_char,
) -> bool {
    // SAFETY: as in `text`.
    unsafe { Context::host(context).is_some_and(|host| (host.metadata_set)(context, key, value)) }
}

/// The guide's name for [`em_context_get`].
///
/// # Safety
/// As for [`em_context_exists`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_get_metadata(
    context: *const Context,
    key: *const c_char,
) -> FfiString {
    // SAFETY: the same contract.
    unsafe { em_context_get(context, key) }
}

/// The guide's name for [`em_context_set`].
///
/// # Safety
/// As for [`em_context_set`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_set_metadata(
    context: *mut Context,
    key: *const c_char,
    value: *const c_char,
) -> bool {
    // SAFETY: the same contract.
    unsafe { em_context_set(context, key, value) }
}

/// # Safety
/// As for [`em_context_get_id`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_context_has_delivery(context: *const Context) -> bool {
    flag(context, Flag::Delivery)
}

/// # Safety
/// As for [`em_context_get_id`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_delivery_get_message_id(context: *const Context) -> FfiString {
    text(context, Text::DeliveryMessageId)
}

/// # Safety
/// As for [`em_context_get_id`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_delivery_get_domain(context: *const Context) -> FfiString {
    text(context, Text::DeliveryDomain)
}

/// # Safety
/// As for [`em_context_get_id`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_delivery_get_server(context: *const Context) -> FfiString {
    text(context, Text::DeliveryServer)
}

/// # Safety
/// As for [`em_context_get_id`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_delivery_get_error(context: *const Context) -> FfiString {
    text(context, Text::DeliveryError)
}

/// # Safety
/// As for [`em_context_get_id`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_delivery_get_attempts(context: *const Context) -> u32 {
    // SAFETY: as in `text`.
    unsafe { Context::host(context).map_or(0, |host| (host.delivery_attempts)(context)) }
}

/// # Safety
/// `string` came from an em_* function and was not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_free_string(string: FfiString) {
    // SAFETY: the caller's promise.
    unsafe { strings::free_string(string) }
}

/// # Safety
/// `vector` came from an em_* function and was not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn em_free_string_vector(vector: FfiStringVector) {
    // SAFETY: the caller's promise.
    unsafe { strings::free_vector(vector) }
}
