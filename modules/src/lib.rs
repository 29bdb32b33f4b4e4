//! Plugin modules: shared libraries written against `include/empath.h`,
//! loaded with libloading from the config's `modules` list. smtpd runs
//! their validation callbacks; qmgr runs their delivery events.

mod context;
pub mod strings;

use std::ffi::CString;
use std::path::{Path, PathBuf};

pub use context::{ModuleContext, RawContext};

/// The API version this host implements (`EM_API_VERSION` in empath.h).
pub const API_VERSION: u32 = 1;

/// The gcc flags the examples are built with in the tests (and a good
/// start for any module): a position-independent shared object, C11,
/// every warning an error. Add `-I <modules>/include`.
pub const GCC_FLAGS: [&str; 6] = [
    "-shared",
    "-fPIC",
    "-Wall",
    "-Werror",
    "-std=c11",
    "-D_DEFAULT_SOURCE",
];

type ValidateFn = Option<unsafe extern "C" fn(*mut RawContext) -> libc::c_int>;
type EventFn = Option<unsafe extern "C" fn(*mut RawContext)>;

#[repr(C)]
#[derive(Clone, Copy)]
struct ValidationListener {
    on_connect: ValidateFn,
    on_mail_from: ValidateFn,
    on_rcpt_to: ValidateFn,
    on_data: ValidateFn,
    on_starttls: ValidateFn,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct EventListener {
    on_connection_opened: EventFn,
    on_connection_closed: EventFn,
    on_delivery_success: EventFn,
    on_delivery_failure: EventFn,
}

/// `em_module` in empath.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct Declaration {
    api_version: u32,
    name: *const libc::c_char,
    init: Option<unsafe extern "C" fn(libc::c_int, *const *const libc::c_char) -> libc::c_int>,
    validation: ValidationListener,
    events: EventListener,
}

/// The validation points of an SMTP session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    Connect,
    MailFrom,
    RcptTo,
    Data,
    StartTls,
}

/// Things that happened, for modules that want to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    ConnectionOpened,
    ConnectionClosed,
    DeliverySuccess,
    DeliveryFailure,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot load module {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("module {path} does not export declare_module: {reason}")]
    NoDeclaration { path: PathBuf, reason: String },
    #[error("module {path} was built for API version {found}, Empath provides {expected}")]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("module {path} ({name}) failed to initialise (init returned {status})")]
    Init {
        path: PathBuf,
        name: String,
        status: i32,
    },
}

/// A module rejected a validation: the reply to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub module: String,
    pub code: u16,
    pub text: String,
}

/// One loaded module. The library stays loaded for as long as this lives.
///
/// Only the callback tables of the declaration are kept, not its `name`
/// pointer (copied into `name` at load): the tables hold nothing but
/// function pointers, so `Module` and [`Modules`] are `Send + Sync` without
/// any `unsafe impl`, and one set of modules can serve every session task
/// of a multi-threaded daemon. The C side of that contract is in empath.h:
/// callbacks may run on several threads at once, each with its own context.
pub struct Module {
    name: String,
    validation: ValidationListener,
    events: EventListener,
    _library: libloading::Library,
}

impl Module {
    /// Loads the library at `path` and calls its `init` with `arguments`.
    pub fn load(path: &Path, arguments: &[String]) -> Result<Self, LoadError> {
        // SAFETY: loading a module runs its initialisers; trusting the
        // configured module is the point of a plugin system.
        let library = unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::Open {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        // SAFETY: the symbol's type is fixed by empath.h.
        let declaration = unsafe {
            let declare: libloading::Symbol<unsafe extern "C" fn() -> Declaration> = library
                .get(b"declare_module\0")
                .map_err(|e| LoadError::NoDeclaration {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            declare()
        };
        if declaration.api_version != API_VERSION {
            return Err(LoadError::Version {
                path: path.to_owned(),
                found: declaration.api_version,
                expected: API_VERSION,
            });
        }
        let name = if declaration.name.is_null() {
            path.file_stem()
                .map_or_else(|| "module".to_owned(), |s| s.to_string_lossy().into_owned())
        } else {
            // SAFETY: a non-null name is a NUL-terminated string in the library.
            unsafe { std::ffi::CStr::from_ptr(declaration.name) }
                .to_string_lossy()
                .into_owned()
        };
        if let Some(init) = declaration.init {
            let owned: Vec<CString> = arguments
                .iter()
                .map(|a| CString::new(strings::sanitize(a.as_bytes())).unwrap_or_default())
                .collect();
            let pointers: Vec<*const libc::c_char> = owned.iter().map(|a| a.as_ptr()).collect();
            let argc = libc::c_int::try_from(pointers.len()).unwrap_or(libc::c_int::MAX);
            // SAFETY: argv holds argc valid C strings that outlive the call.
            let status = unsafe { init(argc, pointers.as_ptr()) };
            if status != 0 {
                return Err(LoadError::Init {
                    path: path.to_owned(),
                    name,
                    status,
                });
            }
        }
        tracing::info!(module = %name, path = %path.display(), "module loaded");
        Ok(Self {
            name,
            validation: declaration.validation,
            events: declaration.events,
            _library: library,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn validator(&self, point: Validation) -> ValidateFn {
        let listener = &self.validation;
        match point {
            Validation::Connect => listener.on_connect,
            Validation::MailFrom => listener.on_mail_from,
            Validation::RcptTo => listener.on_rcpt_to,
            Validation::Data => listener.on_data,
            Validation::StartTls => listener.on_starttls,
        }
    }

    fn handler(&self, event: Event) -> EventFn {
        let listener = &self.events;
        match event {
            Event::ConnectionOpened => listener.on_connection_opened,
            Event::ConnectionClosed => listener.on_connection_closed,
            Event::DeliverySuccess => listener.on_delivery_success,
            Event::DeliveryFailure => listener.on_delivery_failure,
        }
    }
}

/// The configured modules, in config order.
#[derive(Default)]
pub struct Modules {
    modules: Vec<Module>,
}

impl std::fmt::Debug for Modules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Modules {
    /// Loads every module; the first failure is the error.
    pub fn load<'a>(
        specs: impl IntoIterator<Item = (&'a Path, &'a [String])>,
    ) -> Result<Self, LoadError> {
        let modules = specs
            .into_iter()
            .map(|(path, arguments)| Module::load(path, arguments))
            .collect::<Result<_, _>>()?;
        Ok(Self { modules })
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// True if some module has a callback for `point`: lets the host skip
    /// work (such as keeping a copy of the message for Data) nobody needs.
    pub fn wants(&self, point: Validation) -> bool {
        self.modules.iter().any(|m| m.validator(point).is_some())
    }

    /// True if some module has a handler for `event`.
    pub fn wants_event(&self, event: Event) -> bool {
        self.modules.iter().any(|m| m.handler(event).is_some())
    }

    /// The names of the loaded modules, in config order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.modules.iter().map(Module::name)
    }

    /// Runs the validation callbacks in order; the first that returns
    /// non-zero rejects, with the reply it set or a default 550 5.7.1.
    pub fn validate(
        &self,
        point: Validation,
        context: &mut ModuleContext,
    ) -> Result<(), Rejection> {
        for module in &self.modules {
            let Some(callback) = module.validator(point) else {
                continue;
            };
            context.response = None;
            let mut raw = RawContext::new(context);
            // SAFETY: the callback follows the empath.h contract; `raw`
            // lives for the duration of the call.
            let status = unsafe { callback(&raw mut raw) };
            if status != 0 {
                let (code, text) = context.response.take().unwrap_or_else(|| {
                    (
                        550,
                        format!("5.7.1 Rejected by policy module {}", module.name),
                    )
                });
                tracing::info!(module = %module.name, ?point, code, %text, "module rejected");
                return Err(Rejection {
                    module: module.name.clone(),
                    code,
                    text,
                });
            }
        }
        Ok(())
    }

    /// Tells every module about `event`.
    pub fn emit(&self, event: Event, context: &mut ModuleContext) {
        for module in &self.modules {
            if let Some(callback) = module.handler(event) {
                let mut raw = RawContext::new(context);
                // SAFETY: as in `validate`.
                unsafe { callback(&raw mut raw) };
            }
        }
    }
}

/// One `Modules` serves every session task of smtpd's multi-threaded
/// runtime: it must stay shareable.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Modules>();
};
