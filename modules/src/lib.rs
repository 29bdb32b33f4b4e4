//! Plugin modules: shared libraries written against `include/empath.h`
//! (the original Empath's module contract), loaded with libloading from
//! the config's `modules` list. smtpd runs their validators and tells them
//! about connections, SMTP errors and received messages; qmgr tells them
//! about deliveries, smtp-out about DNS lookups.
//!
//! - [`abi`]: the C layout of empath.h and the table through which
//!   libempath.so (the `empath-ffi` crate) reaches the daemon;
//! - `context`: [`ModuleContext`] and the one implementation of every
//!   `em_*` function;
//! - [`strings`]: NUL-free strings across the boundary;
//! - this file: loading a module and calling it.

pub mod abi;
mod context;
pub mod strings;

use std::ffi::CStr;
use std::path::{Path, PathBuf};

pub use abi::API_VERSION;
use abi::{EmitFn, InitFn, Mod, ValidateFn, Validators};
pub use context::{CallContext, DeliveryInfo, ModuleContext, TlsInfo};

/// The gcc flags the examples are built with in the tests (and a good
/// start for any module): a position-independent shared object, C11,
/// every warning an error. Add `-I` for empath.h and `-lempath`.
pub const GCC_FLAGS: [&str; 6] = [
    "-shared",
    "-fPIC",
    "-Wall",
    "-Werror",
    "-std=c11",
    "-D_DEFAULT_SOURCE",
];

/// For tests that build modules: the directory of the libempath.so that
/// cargo built with the running test binary (its own directory,
/// `target/<profile>/deps`, or the one above). A test package gets it
/// built by depending on `empath-ffi`.
pub fn built_libempath_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .find(|dir| dir.join("libempath.so").is_file())
        .map(Path::to_owned)
}

/// The validation points of an SMTP session (`Validators` in empath.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    Connect,
    Ehlo,
    MailFrom,
    RcptTo,
    Data,
    StartTls,
}

/// `Ev` in empath.h: things that happened, for event listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Event {
    ConnectionOpened = 0,
    ConnectionClosed = 1,
    DeliveryAttempt = 2,
    DeliverySuccess = 3,
    DeliveryFailure = 4,
    SmtpError = 5,
    SmtpMessageReceived = 6,
    DnsLookup = 7,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot load module {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "module {path} does not say which module API it was built for (it exports no \
         em_module_api_version): build it against empath.h (API version {API_VERSION}) and \
         declare it with EM_DECLARE_MODULE"
    )]
    NoApiVersion { path: PathBuf },
    #[error(
        "module {path} was built for module API version {found}, Empath provides {API_VERSION}"
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "module {path} is linked with a libempath.so for module API version {found}, Empath \
         provides {API_VERSION}: install the libempath.so of this Empath"
    )]
    Library { path: PathBuf, found: u32 },
    #[error("module {path} does not export declare_module: {reason}")]
    NoDeclaration { path: PathBuf, reason: String },
    #[error(
        "module {path}: declare_module returned an unknown kind of module ({tag}; \
         expected ValidationListener or EventListener)"
    )]
    UnknownKind { path: PathBuf, tag: u32 },
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

/// What a module listens to.
#[derive(Clone, Copy)]
enum Listener {
    Validation(Validators),
    Events(Option<EmitFn>),
}

/// One loaded module. The library stays loaded for as long as this lives.
///
/// Only the callbacks of the declaration are kept, not its name pointer
/// (copied into `name` at load): function pointers only, so `Module` and
/// [`Modules`] are `Send + Sync` without any `unsafe impl`, and one set of
/// modules serves every session task of a multi-threaded daemon. The C side
/// of that contract is in empath.h: callbacks may run on several threads
/// at once, each with its own context.
pub struct Module {
    name: String,
    listener: Listener,
    _library: libloading::os::unix::Library,
}

impl Module {
    /// Loads the library at `path`, checks that it was built for this API,
    /// and calls its `init` with `arguments`.
    pub fn load(path: &Path, arguments: &[String]) -> Result<Self, LoadError> {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        let fail = |reason: &dyn std::fmt::Display| LoadError::Open {
            path: path.to_owned(),
            reason: reason.to_string(),
        };
        // RTLD_NOW: a module calling an em_* function that no library
        // provides (not linked with -lempath) fails here, with the
        // loader's message, rather than when the function is first called.
        // SAFETY: loading a module runs its initialisers; trusting the
        // configured module is the point of a plugin system.
        let library =
            unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map_err(|e| fail(&e))?;
        // The version first: declare_module's layout depends on it.
        // SAFETY: EM_DECLARE_MODULE defines the symbol as a const uint32_t.
        let found = unsafe {
            let version = library
                .get::<*const u32>(abi::MODULE_API_VERSION_SYMBOL)
                .map_err(|_| LoadError::NoApiVersion {
                    path: path.to_owned(),
                })?;
            version.read_unaligned()
        };
        if found != API_VERSION {
            return Err(LoadError::Version {
                path: path.to_owned(),
                found,
            });
        }
        // The libempath.so the module will call, if it calls any.
        // SAFETY: libempath defines the symbol as `uint32_t (void)`.
        if let Ok(library_version) =
            unsafe { library.get::<unsafe extern "C" fn() -> u32>(abi::LIBRARY_API_VERSION_SYMBOL) }
        {
            // SAFETY: as above.
            let found = unsafe { library_version() };
            if found != API_VERSION {
                return Err(LoadError::Library {
                    path: path.to_owned(),
                    found,
                });
            }
        }
        // SAFETY: the module declares API_VERSION, whose declare_module
        // returns a Mod.
        let declaration: Mod = unsafe {
            let declare = library
                .get::<abi::DeclareModuleFn>(abi::DECLARE_MODULE_SYMBOL)
                .map_err(|e| LoadError::NoDeclaration {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            declare()
        };
        // SAFETY: the tag says which member of the union is set.
        let (name, init, listener) = unsafe {
            match declaration.tag {
                abi::TAG_VALIDATION_LISTENER => {
                    let body = declaration.body.validation;
                    let listener = Listener::Validation(body.validators);
                    (body.module_name, body.init, listener)
                }
                abi::TAG_EVENT_LISTENER => {
                    let body = declaration.body.event;
                    (body.module_name, body.init, Listener::Events(body.emit))
                }
                tag => {
                    return Err(LoadError::UnknownKind {
                        path: path.to_owned(),
                        tag,
                    });
                }
            }
        };
        let name = if name.is_null() {
            path.file_stem()
                .map_or_else(|| "module".to_owned(), |s| s.to_string_lossy().into_owned())
        } else {
            // SAFETY: a non-null name is a NUL-terminated string in the library.
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned()
        };
        if let Some(init) = init {
            call_init(init, arguments).map_err(|status| LoadError::Init {
                path: path.to_owned(),
                name: name.clone(),
                status,
            })?;
        }
        tracing::info!(module = %name, path = %path.display(), "module loaded");
        Ok(Self {
            name,
            listener,
            _library: library,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn validator(&self, point: Validation) -> Option<ValidateFn> {
        let Listener::Validation(validators) = &self.listener else {
            return None;
        };
        match point {
            Validation::Connect => validators.validate_connect,
            Validation::Ehlo => validators.validate_ehlo,
            Validation::MailFrom => validators.validate_mail_from,
            Validation::RcptTo => validators.validate_rcpt_to,
            Validation::Data => validators.validate_data,
            Validation::StartTls => validators.validate_starttls,
        }
    }

    fn emitter(&self) -> Option<EmitFn> {
        match self.listener {
            Listener::Events(emit) => emit,
            Listener::Validation(_) => None,
        }
    }
}

/// Calls a module's `init` with the config's arguments. The original
/// Empath never freed them, and modules written for it may keep pointers
/// into them (or free them): they are left to the module, for the life of
/// the process.
fn call_init(init: InitFn, arguments: &[String]) -> Result<(), i32> {
    let vector = strings::to_ffi_vector(arguments);
    // SAFETY: the vector is valid; init follows the empath.h contract.
    let status = unsafe { init(vector) };
    if status == 0 { Ok(()) } else { Err(status) }
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

    /// Loads the config's `modules` list.
    pub fn load_configured(
        configured: &[empath_common::config::Module],
    ) -> Result<Self, LoadError> {
        Self::load(
            configured
                .iter()
                .map(|m| (m.name.as_path(), m.arguments.as_slice())),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// True if some module validates `point`: lets the host skip work
    /// (such as keeping a copy of the message for Data) nobody needs.
    pub fn wants(&self, point: Validation) -> bool {
        self.modules.iter().any(|m| m.validator(point).is_some())
    }

    /// True if some module listens to events.
    pub fn wants_events(&self) -> bool {
        self.modules.iter().any(|m| m.emitter().is_some())
    }

    /// The names of the loaded modules, in config order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.modules.iter().map(Module::name)
    }

    /// Runs the validators in order; the first that returns non-zero
    /// rejects, with the reply it set or a default 550 5.7.1.
    pub fn validate(
        &self,
        point: Validation,
        context: &mut ModuleContext,
    ) -> Result<(), Rejection> {
        for module in &self.modules {
            let Some(validator) = module.validator(point) else {
                continue;
            };
            context.response = None;
            let status = {
                let mut call = CallContext::new(context);
                // SAFETY: the validator follows the empath.h contract; the
                // context lives for the duration of the call.
                unsafe { validator(call.as_ptr()) }
            };
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
        context.response = None;
        Ok(())
    }

    /// Tells every event listener about `event`. `details` are metadata
    /// that describe this event only (`dns_cache_status`, `smtp_error`,
    /// ...): they are there during the calls and gone afterwards.
    pub fn emit(&self, event: Event, context: &mut ModuleContext, details: &[(&str, String)]) {
        if !self.wants_events() {
            return;
        }
        let saved: Vec<(&str, Option<String>)> = details
            .iter()
            .map(|(key, value)| {
                (
                    *key,
                    context.metadata.insert((*key).to_owned(), value.clone()),
                )
            })
            .collect();
        for emit in self.modules.iter().filter_map(Module::emitter) {
            let mut call = CallContext::new(context);
            // SAFETY: as in `validate`.
            unsafe { emit(event as u32, call.as_ptr()) };
        }
        for (key, before) in saved.into_iter().rev() {
            match before {
                Some(value) => context.metadata.insert(key.to_owned(), value),
                None => context.metadata.remove(key),
            };
        }
    }
}

/// Runs module callbacks (synchronous C code): on a multi-threaded tokio
/// runtime under `block_in_place`, so that a slow module holds up its own
/// task only, not the other tasks of its worker thread. Elsewhere (the
/// single-threaded runtime of unit tests, or no runtime) directly.
pub fn blocking<T>(call: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(call)
    } else {
        call()
    }
}

/// One `Modules` serves every session task of smtpd's multi-threaded
/// runtime: it must stay shareable.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Modules>();
};
