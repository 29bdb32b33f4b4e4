//! The C side of the module API: empath.h against the Rust layout, and the
//! examples built with gcc, linked with this libempath.so (-lempath), and
//! loaded as the daemons load modules.

use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use empath_modules::abi::{EventBody, FfiString, FfiStringVector, Mod, ValidationBody, Validators};
use empath_modules::{
    DeliveryInfo, Event, LoadError, Module, ModuleContext, Modules, TlsInfo, Validation,
};

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../include")
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn libempath_dir() -> PathBuf {
    empath_modules::built_libempath_dir().expect("cargo built libempath.so for this test")
}

/// Compiles C `sources` with gcc: a module (`-shared`, linked with
/// -lempath) or, with `program`, an executable.
fn gcc(sources: &[&Path], output: &Path, program: bool) {
    let lib = libempath_dir();
    let mut command = Command::new("gcc");
    if program {
        command.args(["-Wall", "-Werror", "-std=c11"]);
    } else {
        command.args(empath_modules::GCC_FLAGS);
    }
    command.arg("-I").arg(include_dir()).args(sources);
    if !program {
        command
            .arg("-L")
            .arg(&lib)
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-lempath");
    }
    let result = command.arg("-o").arg(output).output().expect("gcc runs");
    assert!(
        result.status.success(),
        "gcc failed on {sources:?}:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
}

/// Builds `examples/<name>.c` into `dir/lib<name>.so`.
fn build(name: &str, dir: &Path) -> PathBuf {
    let output = dir.join(format!("lib{name}.so"));
    gcc(&[&examples_dir().join(format!("{name}.c"))], &output, false);
    output
}

/// Builds a module from C source text.
fn build_source(name: &str, source: &str, dir: &Path) -> PathBuf {
    let file = dir.join(format!("{name}.c"));
    std::fs::write(&file, source).unwrap();
    let output = dir.join(format!("lib{name}.so"));
    gcc(&[&file], &output, false);
    output
}

fn load(library: &Path, arguments: &[&str]) -> Modules {
    let arguments: Vec<String> = arguments.iter().map(|a| (*a).to_owned()).collect();
    Modules::load([(library, arguments.as_slice())])
        .unwrap_or_else(|e| panic!("{}: {e}", library.display()))
}

fn session(sender: &str) -> ModuleContext {
    ModuleContext {
        id: "session-1".into(),
        sender: sender.into(),
        recipients: vec!["bob@example.com".into()],
        client_address: "192.0.2.7".into(),
        ..ModuleContext::default()
    }
}

#[test]
fn the_header_matches_the_layout_the_daemons_read() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("layout.c");
    std::fs::write(
        &program,
        r#"#include <stddef.h>
#include <stdio.h>
#include "empath.h"
int main(void) {
    printf("%zu %zu %zu\n", sizeof(String), offsetof(String, len), offsetof(String, data));
    printf("%zu %zu %zu\n", sizeof(StringVector), offsetof(StringVector, len), offsetof(StringVector, data));
    printf("%zu %zu %zu\n", sizeof(Validators), offsetof(Validators, validate_ehlo), offsetof(Validators, validate_starttls));
    printf("%zu %zu %zu\n", sizeof(Validation), offsetof(Validation, init), offsetof(Validation, validators));
    printf("%zu %zu %zu\n", sizeof(EventListener_Body), offsetof(EventListener_Body, init), offsetof(EventListener_Body, emit));
    printf("%zu %zu %zu\n", sizeof(Mod), offsetof(Mod, validation_listener), offsetof(Mod, event_listener));
    printf("%d %d %d %d\n", (int)sizeof(Mod_Tag), ValidationListener, EventListener, (int)sizeof(Ev));
    printf("%d %d %d %d %d %d %d %d\n", ConnectionOpened, ConnectionClosed, DeliveryAttempt, DeliverySuccess,
           DeliveryFailure, SmtpError, SmtpMessageReceived, DnsLookup);
    printf("%d\n", EM_API_VERSION);
    return 0;
}
"#,
    )
    .unwrap();
    let binary = dir.path().join("layout");
    gcc(&[&program], &binary, true);
    let output = Command::new(&binary)
        .output()
        .expect("run the layout program");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    let expected = [
        format!(
            "{} {} {}",
            size_of::<FfiString>(),
            offset_of!(FfiString, len),
            offset_of!(FfiString, data)
        ),
        format!(
            "{} {} {}",
            size_of::<FfiStringVector>(),
            offset_of!(FfiStringVector, len),
            offset_of!(FfiStringVector, data)
        ),
        format!(
            "{} {} {}",
            size_of::<Validators>(),
            offset_of!(Validators, validate_ehlo),
            offset_of!(Validators, validate_starttls)
        ),
        format!(
            "{} {} {}",
            size_of::<ValidationBody>(),
            offset_of!(ValidationBody, init),
            offset_of!(ValidationBody, validators)
        ),
        format!(
            "{} {} {}",
            size_of::<EventBody>(),
            offset_of!(EventBody, init),
            offset_of!(EventBody, emit)
        ),
        format!(
            "{} {} {}",
            size_of::<Mod>(),
            offset_of!(Mod, body),
            offset_of!(Mod, body)
        ),
        format!(
            "4 {} {} 4",
            empath_modules::abi::TAG_VALIDATION_LISTENER,
            empath_modules::abi::TAG_EVENT_LISTENER
        ),
        [
            Event::ConnectionOpened,
            Event::ConnectionClosed,
            Event::DeliveryAttempt,
            Event::DeliverySuccess,
            Event::DeliveryFailure,
            Event::SmtpError,
            Event::SmtpMessageReceived,
            Event::DnsLookup,
        ]
        .map(|e| (e as u32).to_string())
        .join(" "),
        empath_modules::API_VERSION.to_string(),
    ]
    .join("\n");
    assert_eq!(printed.trim_end(), expected);
}

#[test]
fn reject_domain_refuses_only_its_domain_with_its_reply() {
    let dir = tempfile::tempdir().unwrap();
    let modules = load(&build("reject_domain", dir.path()), &["spam.example"]);
    assert_eq!(modules.names().collect::<Vec<_>>(), ["reject_domain"]);

    let rejection = modules
        .validate(Validation::MailFrom, &mut session("x@Spam.Example"))
        .unwrap_err();
    assert_eq!(
        (rejection.code, rejection.text.as_str()),
        (550, "5.7.1 Mail from spam.example is not accepted here")
    );
    assert_eq!(rejection.module, "reject_domain");
    assert!(
        modules
            .validate(Validation::MailFrom, &mut session("x@ok.example"))
            .is_ok()
    );
    // No validator for RCPT: accepted.
    assert!(!modules.wants(Validation::RcptTo));
    assert!(
        modules
            .validate(Validation::RcptTo, &mut session("x@spam.example"))
            .is_ok()
    );
}

#[test]
fn the_first_rejecting_module_wins() {
    let dir = tempfile::tempdir().unwrap();
    let first = build("reject_domain", dir.path());
    let second = build_source(
        "refuse_all",
        r#"#include <empath.h>
static int validate_mail_from(Context *ctx) { em_context_set_response(ctx, 451, "4.7.1 second"); return 1; }
static int init(StringVector a) { (void)a; return 0; }
EM_DECLARE_MODULE(Validation, .validation_listener = {"refuse_all", init, {.validate_mail_from = validate_mail_from}});
"#,
        dir.path(),
    );
    let arguments = ["spam.example".to_owned()];
    let modules = Modules::load([
        (first.as_path(), &arguments[..]),
        (second.as_path(), &[][..]),
    ])
    .unwrap();
    let rejection = modules
        .validate(Validation::MailFrom, &mut session("x@spam.example"))
        .unwrap_err();
    assert_eq!(
        (rejection.module.as_str(), rejection.code),
        ("reject_domain", 550)
    );
    let rejection = modules
        .validate(Validation::MailFrom, &mut session("x@fine.example"))
        .unwrap_err();
    assert_eq!(
        (
            rejection.module.as_str(),
            rejection.code,
            rejection.text.as_str()
        ),
        ("refuse_all", 451, "4.7.1 second")
    );
}

#[test]
fn init_failure_and_missing_files_are_load_errors() {
    let dir = tempfile::tempdir().unwrap();
    let library = build("reject_domain", dir.path());
    let error = Module::load(&library, &[])
        .err()
        .expect("init without arguments fails");
    assert!(
        matches!(error, LoadError::Init { status: 1, .. }),
        "{error}"
    );
    let error = Module::load(&dir.path().join("missing.so"), &[])
        .err()
        .expect("missing file fails");
    assert!(error.to_string().contains("missing.so"), "{error}");
}

#[test]
fn modules_for_another_api_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // Empath's API before version 2: declare_module returned an em_module
    // by value, and nothing recorded the version outside it.
    let old = build_source(
        "old_api",
        r#"#include <stdint.h>
typedef struct { uint32_t api_version; const char *name; int (*init)(int, const char *const *); void *callbacks[9]; } em_module;
em_module declare_module(void) { em_module m = {1, "old", 0, {0}}; return m; }
"#,
        dir.path(),
    );
    let error = Module::load(&old, &[]).err().expect("no version symbol");
    assert!(matches!(error, LoadError::NoApiVersion { .. }), "{error}");
    assert!(
        error.to_string().contains("EM_DECLARE_MODULE"),
        "says what to do: {error}"
    );

    // The seeds' architecture sketch: `Mod *declare_module(void)`.
    let pointer = build_source(
        "pointer_api",
        r#"#include <stddef.h>
typedef struct Mod { const char *name; } Mod;
Mod *declare_module(void) { return NULL; }
"#,
        dir.path(),
    );
    let error = Module::load(&pointer, &[])
        .err()
        .expect("no version symbol");
    assert!(matches!(error, LoadError::NoApiVersion { .. }), "{error}");

    let future = build_source(
        "future_api",
        r#"#include <empath.h>
const uint32_t em_module_api_version = 99;
Mod declare_module(void) { return (Mod){ValidationListener, {.validation_listener = {"future", NULL, {0}}}}; }
"#,
        dir.path(),
    );
    let error = Module::load(&future, &[]).err().expect("another version");
    assert!(
        matches!(error, LoadError::Version { found: 99, .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("version 99, Empath provides 2"),
        "{error}"
    );

    let odd = build_source(
        "odd_kind",
        r#"#include <empath.h>
const uint32_t em_module_api_version = EM_API_VERSION;
Mod declare_module(void) { Mod m = {0}; m.tag = (Mod_Tag)7; return m; }
"#,
        dir.path(),
    );
    let error = Module::load(&odd, &[]).err().expect("unknown kind");
    assert!(
        matches!(error, LoadError::UnknownKind { tag: 7, .. }),
        "{error}"
    );

    // Calls em_* functions without linking libempath.so: the loader says
    // which symbol is missing, at load rather than at the first call.
    let source = dir.path().join("unlinked.c");
    std::fs::write(
        &source,
        r#"#include <empath.h>
static int validate_connect(Context *ctx) { em_free_string(em_context_get_id(ctx)); return 0; }
EM_DECLARE_MODULE(Validation, .validation_listener = {"unlinked", NULL, {.validate_connect = validate_connect}});
"#,
    )
    .unwrap();
    let unlinked = dir.path().join("libunlinked.so");
    let status = Command::new("gcc")
        .args(empath_modules::GCC_FLAGS)
        .arg("-I")
        .arg(include_dir())
        .arg(&source)
        .arg("-o")
        .arg(&unlinked)
        .status()
        .unwrap();
    assert!(status.success());
    let error = Module::load(&unlinked, &[])
        .err()
        .expect("undefined symbol");
    assert!(
        matches!(error, LoadError::Open { .. }) && error.to_string().contains("em_context_get_id"),
        "{error}"
    );
}

#[test]
fn metadata_set_at_mail_from_is_seen_in_the_delivery_events() {
    let dir = tempfile::tempdir().unwrap();
    let tag = build("correlation_tag", dir.path());
    let log_library = build("delivery_log", dir.path());
    let log = dir.path().join("events.log");
    let log_arg = log.display().to_string();
    let modules = Modules::load([
        (tag.as_path(), &[][..]),
        (log_library.as_path(), &[log_arg][..]),
    ])
    .unwrap();
    assert!(modules.wants(Validation::MailFrom) && modules.wants_events());

    let mut reception = session("alice@example.org");
    modules
        .validate(Validation::MailFrom, &mut reception)
        .unwrap();
    let correlation = reception.metadata.get("correlation_id").cloned();
    assert_eq!(correlation.as_deref(), Some("session-1/192.0.2.7"));

    // Later, in another process: a context rebuilt from the queue file.
    let mut delivery = ModuleContext {
        id: "01QUEUEID".into(),
        metadata: reception.metadata.clone(),
        recipients: vec!["a@x.example".into(), "b@x.example".into()],
        delivery: Some(DeliveryInfo {
            message_id: "01QUEUEID".into(),
            domain: "x.example".into(),
            server: "mx.x.example [192.0.2.9]:25".into(),
            error: String::new(),
            attempts: 2,
        }),
        ..ModuleContext::default()
    };
    modules.emit(Event::DeliverySuccess, &mut delivery, &[]);
    delivery.delivery.as_mut().unwrap().error = "550 5.1.1 no such user".into();
    modules.emit(Event::DeliveryFailure, &mut delivery, &[]);
    modules.emit(
        Event::SmtpError,
        &mut delivery,
        &[
            ("smtp_error_code", "500".to_owned()),
            ("smtp_error", "500 5.5.2 what?".to_owned()),
        ],
    );
    // Event details are there for the event only.
    assert!(!delivery.metadata.contains_key("smtp_error"));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "DeliverySuccess message=01QUEUEID domain=x.example server=mx.x.example [192.0.2.9]:25 \
         attempts=2 correlation=session-1/192.0.2.7 rcpt=a@x.example rcpt=b@x.example\n\
         DeliveryFailure message=01QUEUEID domain=x.example server=mx.x.example [192.0.2.9]:25 \
         attempts=2 error=550 5.1.1 no such user correlation=session-1/192.0.2.7 rcpt=a@x.example \
         rcpt=b@x.example\n\
         SmtpError code=500 reply=500 5.5.2 what?\n"
    );
    // Validation modules do not see events, event listeners no validations.
    let mut other = session("x@y.example");
    modules.validate(Validation::Data, &mut other).unwrap();
}

#[test]
fn list_message_sees_recipients_and_data_without_nul_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let copies = tempfile::tempdir().unwrap();
    let modules = load(
        &build("list_message", dir.path()),
        &[&copies.path().display().to_string()],
    );
    assert!(modules.wants(Validation::Data));
    let mut context = session("a@b.example");
    context.recipients.push("carol@example.net".into());
    context.data = b"Subject: x\r\n\r\nnul\0here\r\n".to_vec();
    modules.validate(Validation::Data, &mut context).unwrap();
    let copy = std::fs::read(copies.path().join("session-1.txt")).unwrap();
    assert_eq!(
        copy,
        b"recipients 2\nbob@example.com\ncarol@example.net\ndata 23\nSubject: x\r\n\r\nnulhere\r\n"
    );
}

#[test]
fn require_tls_reads_the_tls_protocol_and_cipher() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("tls.log");
    let modules = load(
        &build("require_tls", dir.path()),
        &[&log.display().to_string()],
    );
    let mut context = session("a@b.example");
    let rejection = modules
        .validate(Validation::MailFrom, &mut context)
        .unwrap_err();
    assert_eq!(
        (rejection.code, rejection.text.as_str()),
        (530, "5.7.0 Must issue a STARTTLS command first")
    );
    context.tls = Some(TlsInfo {
        protocol: "TLSv1.3".into(),
        cipher: "TLS_AES_256_GCM_SHA384".into(),
    });
    modules
        .validate(Validation::StartTls, &mut context)
        .unwrap();
    modules
        .validate(Validation::MailFrom, &mut context)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "session-1 TLSv1.3 TLS_AES_256_GCM_SHA384\n"
    );
    assert_eq!(
        context.metadata.get("tls_cipher").map(String::as_str),
        Some("TLS_AES_256_GCM_SHA384")
    );
}

#[test]
fn crash_on_rcpt_builds_and_validates_only_rcpt_to() {
    let dir = tempfile::tempdir().unwrap();
    let modules = load(&build("crash_on_rcpt", dir.path()), &[]);
    assert!(modules.wants(Validation::RcptTo));
    assert!(!modules.wants(Validation::Data) && !modules.wants(Validation::MailFrom));
    assert!(!modules.wants_events());
    // Other recipients pass; crash@sink.test would abort this test process.
    assert!(
        modules
            .validate(Validation::RcptTo, &mut session("a@client.test"))
            .is_ok()
    );
}

#[test]
fn init_gets_the_arguments_and_a_null_context_gets_empty_answers() {
    let dir = tempfile::tempdir().unwrap();
    let library = build_source(
        "arguments",
        r#"#include <string.h>
#include <empath.h>
static int validate_connect(Context *ctx) { (void)ctx; return 0; }
static int init(StringVector arguments) {
    if (arguments.len != 2 || strcmp(arguments.data[0].data, "one") != 0 || arguments.data[1].len != 3)
        return 2;
    /* A null context: empty answers, no crash. */
    String s = em_context_get_id(NULL);
    int ok = s.data != NULL && s.len == 0 && !em_context_is_tls(NULL) && !em_context_set(NULL, "k", "v")
             && em_delivery_get_attempts(NULL) == 0;
    em_free_string(s);
    return ok ? 0 : 3;
}
EM_DECLARE_MODULE(Validation, .validation_listener = {"arguments", init, {.validate_connect = validate_connect}});
"#,
        dir.path(),
    );
    load(&library, &["one", "t\0wo"]);
    let error = Module::load(&library, &["two".to_owned()]).err().unwrap();
    assert!(
        matches!(error, LoadError::Init { status: 2, .. }),
        "{error}"
    );
}
