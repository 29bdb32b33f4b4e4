//! The C layout of `include/empath.h`, and the table through which
//! libempath.so reaches the daemon that called a module.
//!
//! A module calls `em_*` functions in libempath.so with the `Context *` it
//! was given. The `Context` starts with a pointer to the calling daemon's
//! [`HostApi`]; libempath forwards each call through it, so the module
//! links against one small library whatever daemon loads it, and the one
//! implementation of every function is the daemon's (in `context.rs`).

use std::ffi::c_char;

/// The module API version (`EM_API_VERSION` in empath.h). Version 1 was
/// Empath's own `em_module` API, before the original's contract.
pub const API_VERSION: u32 = 2;

/// The symbol in which `EM_DECLARE_MODULE` records `EM_API_VERSION`.
pub const MODULE_API_VERSION_SYMBOL: &[u8] = b"em_module_api_version\0";
/// The function every module exports.
pub const DECLARE_MODULE_SYMBOL: &[u8] = b"declare_module\0";
/// The function in libempath.so that tells which API it was built for.
pub const LIBRARY_API_VERSION_SYMBOL: &[u8] = b"em_library_api_version\0";

/// `String` in empath.h. Allocated with malloc by the daemon; freed by
/// `em_free_string` in libempath (the same malloc: one C library per
/// process).
#[repr(C)]
#[derive(Debug)]
pub struct FfiString {
    pub len: usize,
    pub data: *mut c_char,
}

/// `StringVector` in empath.h.
#[repr(C)]
#[derive(Debug)]
pub struct FfiStringVector {
    pub len: usize,
    pub data: *mut FfiString,
}

/// `Context` in empath.h, opaque to C. `state` is the daemon's own, and
/// only the daemon's functions in `host` read it.
#[repr(C)]
pub struct Context {
    pub(crate) host: *const HostApi,
    pub(crate) state: *mut std::ffi::c_void,
}

impl Context {
    /// The table of the daemon behind `context`, if `context` is a context
    /// of this API version.
    ///
    /// # Safety
    /// `context` must be null or a pointer a daemon passed to a module
    /// callback, used during that callback.
    pub unsafe fn host<'a>(context: *const Context) -> Option<&'a HostApi> {
        if context.is_null() {
            return None;
        }
        // SAFETY: the caller passes a live context; its table is static.
        let host = unsafe { (*context).host.as_ref()? };
        (host.api_version == API_VERSION).then_some(host)
    }
}

/// The string fields a module can read, as [`HostApi::text`] numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Text {
    Id = 0,
    Sender = 1,
    Data = 2,
    TlsProtocol = 3,
    TlsCipher = 4,
    ClientAddress = 5,
    Helo = 6,
    DeliveryMessageId = 7,
    DeliveryDomain = 8,
    DeliveryServer = 9,
    DeliveryError = 10,
}

impl Text {
    pub const ALL: [Self; 11] = [
        Self::Id,
        Self::Sender,
        Self::Data,
        Self::TlsProtocol,
        Self::TlsCipher,
        Self::ClientAddress,
        Self::Helo,
        Self::DeliveryMessageId,
        Self::DeliveryDomain,
        Self::DeliveryServer,
        Self::DeliveryError,
    ];

    /// The field numbered `number`; numbers cross the library boundary
    /// as plain integers, so that an unknown one is not undefined behaviour.
    pub fn from_number(number: u32) -> Option<Self> {
        Self::ALL.get(usize::try_from(number).ok()?).copied()
    }
}

/// The yes/no questions a module can ask, as [`HostApi::flag`] numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Flag {
    Tls = 0,
    Delivery = 1,
}

/// The daemon's side of every `em_*` function. Every entry takes the
/// context the module passed in (checked for null by libempath).
#[repr(C)]
pub struct HostApi {
    /// [`API_VERSION`]; libempath ignores a table of another version.
    pub api_version: u32,
    /// A string field ([`Text`] number).
    pub text: unsafe extern "C" fn(*const Context, u32) -> FfiString,
    pub recipients: unsafe extern "C" fn(*const Context) -> FfiStringVector,
    /// A yes/no question ([`Flag`] number).
    pub flag: unsafe extern "C" fn(*const Context, u32) -> bool,
    pub delivery_attempts: unsafe extern "C" fn(*const Context) -> u32,
    /// True if `key` is set; its value goes to `value` when that is not null.
    pub metadata_get: unsafe extern "C" fn(*const Context, *const c_char, *mut FfiString) -> bool,
    pub metadata_set: unsafe extern "C" fn(*mut Context, *const c_char, *const c_char) -> bool,
    pub set_sender: unsafe extern "C" fn(*mut Context, *const c_char) -> bool,
    pub add_recipient: unsafe extern "C" fn(*mut Context, *const c_char) -> bool,
    pub set_response: unsafe extern "C" fn(*mut Context, u32, *const c_char) -> bool,
}

/// `Init` in empath.h.
pub type InitFn = unsafe extern "C" fn(FfiStringVector) -> i32;
/// A validator of `Validators` in empath.h.
pub type ValidateFn = unsafe extern "C" fn(*mut Context) -> i32;
/// `emit` of `EventListener_Body` in empath.h; the event is an `Ev`.
pub type EmitFn = unsafe extern "C" fn(u32, *mut Context) -> i32;

/// `Validators` in empath.h.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Validators {
    pub validate_connect: Option<ValidateFn>,
    pub validate_ehlo: Option<ValidateFn>,
    pub validate_mail_from: Option<ValidateFn>,
    pub validate_rcpt_to: Option<ValidateFn>,
    pub validate_data: Option<ValidateFn>,
    pub validate_starttls: Option<ValidateFn>,
}

/// `Validation` in empath.h.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ValidationBody {
    pub module_name: *const c_char,
    pub init: Option<InitFn>,
    pub validators: Validators,
}

/// `EventListener_Body` in empath.h.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventBody {
    pub module_name: *const c_char,
    pub init: Option<InitFn>,
    pub emit: Option<EmitFn>,
}

/// The union of `Mod` in empath.h.
#[repr(C)]
#[derive(Clone, Copy)]
pub union ModBody {
    pub validation: ValidationBody,
    pub event: EventBody,
}

/// `Mod` in empath.h: `tag` is a `Mod_Tag`, read as a plain integer so
/// that a module returning garbage is an error, not undefined behaviour.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Mod {
    pub tag: u32,
    pub body: ModBody,
}

/// `ValidationListener` in `Mod_Tag`.
pub const TAG_VALIDATION_LISTENER: u32 = 0;
/// `EventListener` in `Mod_Tag`.
pub const TAG_EVENT_LISTENER: u32 = 1;

/// `declare_module`.
pub type DeclareModuleFn = unsafe extern "C" fn() -> Mod;
