//! The context a module sees, and the daemon's implementation of every
//! `em_*` function (reached from libempath.so through [`HostApi`]). The
//! functions never unwind into C: each one catches a panic and reports
//! failure instead.

use std::collections::BTreeMap;
use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::abi::{self, Context, FfiString, FfiStringVector, Flag, HostApi, Text};
use crate::strings;

/// What a module can see and change about a session or a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleContext {
    /// Session ID during reception, queue ID during delivery.
    pub id: String,
    pub sender: String,
    pub recipients: Vec<String>,
    /// The message content (only for validate_data).
    pub data: Vec<u8>,
    pub metadata: BTreeMap<String, String>,
    pub client_address: String,
    /// The EHLO or HELO name.
    pub helo: String,
    /// Set once the session runs over TLS.
    pub tls: Option<TlsInfo>,
    /// Set for the delivery events.
    pub delivery: Option<DeliveryInfo>,
    /// The reply a rejecting module asked for: (code, text).
    pub response: Option<(u16, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// "TLSv1.3"
    pub protocol: String,
    /// The IANA name: "TLS_AES_256_GCM_SHA384"
    pub cipher: String,
}

/// What `em_delivery_*` return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryInfo {
    pub message_id: String,
    pub domain: String,
    /// The server that answered, if one did.
    pub server: String,
    /// The reply that made delivery fail.
    pub error: String,
    /// Attempts so far, the current one included.
    pub attempts: u32,
}

impl ModuleContext {
    fn text(&self, field: Text) -> &[u8] {
        let delivery = self.delivery.as_ref();
        let tls = self.tls.as_ref();
        match field {
            Text::Id => self.id.as_bytes(),
            Text::Sender => self.sender.as_bytes(),
            Text::Data => &self.data,
            Text::TlsProtocol => tls.map_or(&[][..], |t| t.protocol.as_bytes()),
            Text::TlsCipher => tls.map_or(&[][..], |t| t.cipher.as_bytes()),
            Text::ClientAddress => self.client_address.as_bytes(),
            Text::Helo => self.helo.as_bytes(),
            Text::DeliveryMessageId => delivery.map_or(&[][..], |d| d.message_id.as_bytes()),
            Text::DeliveryDomain => delivery.map_or(&[][..], |d| d.domain.as_bytes()),
            Text::DeliveryServer => delivery.map_or(&[][..], |d| d.server.as_bytes()),
            Text::DeliveryError => delivery.map_or(&[][..], |d| d.error.as_bytes()),
        }
    }
}

/// The `Context` handed to one callback: valid while `context` is borrowed.
pub struct CallContext<'a> {
    raw: Context,
    _context: std::marker::PhantomData<&'a mut ModuleContext>,
}

impl<'a> CallContext<'a> {
    pub fn new(context: &'a mut ModuleContext) -> Self {
        Self {
            raw: Context {
                host: &raw const HOST,
                state: std::ptr::from_mut(context).cast(),
            },
            _context: std::marker::PhantomData,
        }
    }

    /// The pointer the callback gets.
    pub fn as_ptr(&mut self) -> *mut Context {
        &raw mut self.raw
    }
}

static HOST: HostApi = HostApi {
    api_version: abi::API_VERSION,
    text,
    recipients,
    flag,
    delivery_attempts,
    metadata_get,
    metadata_set,
    set_sender,
    add_recipient,
    set_response,
};

/// Runs `f` on the context behind `raw`, or returns `fallback` if `raw` is
/// null or `f` panics.
fn with<T>(raw: *const Context, fallback: T, f: impl FnOnce(&mut ModuleContext) -> T) -> T {
    if raw.is_null() {
        return fallback;
    }
    // SAFETY: `raw` was made by CallContext::new and is used only during
    // the callback that received it, while the ModuleContext is borrowed.
    let state = unsafe { (*raw).state.cast::<ModuleContext>() };
    if state.is_null() {
        return fallback;
    }
    // SAFETY: as above; callbacks on one context do not overlap.
    let context = unsafe { &mut *state };
    catch_unwind(AssertUnwindSafe(|| f(context))).unwrap_or(fallback)
}

unsafe extern "C" fn text(raw: *const Context, field: u32) -> FfiString {
    let Some(field) = Text::from_number(field) else {
        return strings::empty();
    };
    with(raw, strings::empty(), |c| {
        strings::to_ffi_string(c.text(field))
    })
}

unsafe extern "C" fn recipients(raw: *const Context) -> FfiStringVector {
    with(raw, strings::to_ffi_vector::<&[u8]>(&[]), |c| {
        strings::to_ffi_vector(&c.recipients)
    })
}

unsafe extern "C" fn flag(raw: *const Context, flag: u32) -> bool {
    with(raw, false, |c| match flag {
        f if f == Flag::Tls as u32 => c.tls.is_some(),
        f if f == Flag::Delivery as u32 => c.delivery.is_some(),
        _ => false,
    })
}

unsafe extern "C" fn delivery_attempts(raw: *const Context) -> u32 {
    with(raw, 0, |c| c.delivery.as_ref().map_or(0, |d| d.attempts))
}

unsafe extern "C" fn metadata_get(
    raw: *const Context,
    key: *const c_char,
    value: *mut FfiString,
) -> bool {
    // SAFETY: a module passes a C string (empath.h contract).
    let Some(key) = (unsafe { strings::from_module(key) }) else {
        return false;
    };
    with(raw, false, |c| {
        let found = c.metadata.get(&key);
        if !value.is_null() {
            let text = found.map_or(&[][..], |v| v.as_bytes());
            // SAFETY: libempath passes a pointer to its own FfiString.
            unsafe { value.write(strings::to_ffi_string(text)) };
        }
        found.is_some()
    })
}

unsafe extern "C" fn metadata_set(
    raw: *mut Context,
    key: *const c_char,
    value: *const c_char,
) -> bool {
    // SAFETY: as for metadata_get.
    let (key, value) = unsafe { (strings::from_module(key), strings::from_module(value)) };
    let (Some(key), Some(value)) = (key, value) else {
        return false;
    };
    if key.is_empty() {
        return false;
    }
    with(raw, false, |c| {
        c.metadata.insert(key, value);
        true
    })
}

unsafe extern "C" fn set_sender(raw: *mut Context, sender: *const c_char) -> bool {
    // SAFETY: as for metadata_get.
    let sender = unsafe { strings::from_module(sender) }.unwrap_or_default();
    let Some(sender) = address(&sender) else {
        return false;
    };
    with(raw, false, |c| {
        c.sender = sender;
        true
    })
}

unsafe extern "C" fn add_recipient(raw: *mut Context, recipient: *const c_char) -> bool {
    // SAFETY: as for metadata_get.
    let recipient = unsafe { strings::from_module(recipient) }.unwrap_or_default();
    let Some(recipient) = address(&recipient).filter(|r| !r.is_empty()) else {
        return false;
    };
    with(raw, false, |c| {
        c.recipients.push(recipient);
        true
    })
}

unsafe extern "C" fn set_response(raw: *mut Context, status: u32, text: *const c_char) -> bool {
    // SAFETY: as for metadata_get.
    let Some(text) = (unsafe { strings::from_module(text) }) else {
        return with(raw, false, |c| {
            c.response = None;
            true
        });
    };
    let Some(code) = u16::try_from(status)
        .ok()
        .filter(|c| (200..600).contains(c))
    else {
        return false;
    };
    // One line only: a module must not be able to inject SMTP replies.
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    with(raw, false, |c| {
        c.response = Some((code, text));
        true
    })
}

/// An address from a module, `<...>` or bare; empty for the null sender.
/// Refused when it could not be an address: spaces or control characters
/// (which could smuggle commands into a later SMTP session), angle
/// brackets inside, or no `@`.
fn address(text: &str) -> Option<String> {
    let text = text.trim();
    let bare = text
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(text);
    if bare.is_empty() {
        return Some(String::new());
    }
    let plausible = bare.contains('@')
        && !bare.starts_with('@')
        && !bare.ends_with('@')
        && !bare
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>');
    plausible.then(|| bare.to_owned())
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    fn read(string: FfiString) -> String {
        // SAFETY: string came from to_ffi_string.
        let text = unsafe { CStr::from_ptr(string.data) }
            .to_string_lossy()
            .into_owned();
        unsafe { strings::free_string(string) };
        text
    }

    #[test]
    fn addresses_from_modules_are_checked() {
        assert_eq!(address("<a@b.example>").as_deref(), Some("a@b.example"));
        assert_eq!(address("a@b.example").as_deref(), Some("a@b.example"));
        assert_eq!(address("<>").as_deref(), Some(""));
        assert_eq!(address(""), Some(String::new()));
        for bad in ["---", "a@b\r\nRCPT TO:<x@y>", "a b@c", "@b", "a@", "<a@b>>"] {
            assert_eq!(address(bad), None, "{bad:?}");
        }
    }

    /// Every entry of the table, on a context with id "s1" and data "x\0y".
    unsafe fn calls(raw: *mut Context) {
        unsafe {
            assert_eq!(read(text(raw, Text::Id as u32)), "s1");
            assert_eq!(read(text(raw, Text::Data as u32)), "xy");
            assert_eq!(read(text(raw, 999)), "");
            assert!(!flag(raw, Flag::Tls as u32));
            assert!(metadata_set(raw, c"k".as_ptr(), c"v".as_ptr()));
            assert!(!metadata_set(raw, c"".as_ptr(), c"v".as_ptr()));
            assert!(!metadata_set(raw, c"k".as_ptr(), std::ptr::null()));
            let mut value = FfiString {
                len: 0,
                data: std::ptr::null_mut(),
            };
            assert!(metadata_get(raw, c"k".as_ptr(), &raw mut value));
            assert_eq!(read(value), "v");
            assert!(!metadata_get(
                raw,
                c"missing".as_ptr(),
                std::ptr::null_mut()
            ));
            assert!(set_sender(raw, std::ptr::null()));
            assert!(!set_sender(raw, c"not an address".as_ptr()));
            assert!(set_response(
                raw,
                550,
                c"5.7.1 no\r\nMAIL FROM:<x>".as_ptr()
            ));
            assert!(!set_response(raw, 150, c"x".as_ptr()));
            assert!(!add_recipient(raw, c"".as_ptr()));
            assert!(add_recipient(raw, c"<c@d.example>".as_ptr()));
        }
    }

    #[test]
    fn the_table_reads_and_changes_the_context() {
        let mut context = ModuleContext {
            id: "s1".into(),
            sender: "a@b.example".into(),
            data: b"x\0y".to_vec(),
            ..ModuleContext::default()
        };
        {
            let mut call = CallContext::new(&mut context);
            let raw = call.as_ptr();
            unsafe { calls(raw) };
        }
        assert_eq!(context.metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(context.sender, "");
        assert_eq!(
            context.response,
            Some((550, "5.7.1 noMAIL FROM:<x>".to_owned()))
        );
        assert_eq!(context.recipients, ["c@d.example"]);
        // NULL forgets the reply.
        {
            let mut call = CallContext::new(&mut context);
            assert!(unsafe { set_response(call.as_ptr(), 550, std::ptr::null()) });
        }
        assert_eq!(context.response, None);
    }

    #[test]
    fn a_null_context_is_refused() {
        unsafe {
            assert_eq!(read(text(std::ptr::null(), Text::Id as u32)), "");
            assert!(!flag(std::ptr::null(), Flag::Delivery as u32));
            assert_eq!(delivery_attempts(std::ptr::null()), 0);
            assert!(Context::host(std::ptr::null()).is_none());
        }
    }
}
