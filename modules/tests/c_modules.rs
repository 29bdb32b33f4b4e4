//! The C examples, built with gcc and loaded as Empath loads modules.

use std::path::{Path, PathBuf};
use std::process::Command;

use empath_modules::{Event, LoadError, Module, ModuleContext, Modules, Validation};

/// Builds `examples/<name>.c` into a shared library in `dir`.
fn build(name: &str, dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = dir.join(format!("lib{name}.so"));
    let status = Command::new("gcc")
        .args(empath_modules::GCC_FLAGS)
        .arg("-I")
        .arg(root.join("include"))
        .arg(root.join("examples").join(format!("{name}.c")))
        .arg("-o")
        .arg(&output)
        .status()
        .expect("gcc runs");
    assert!(status.success(), "gcc failed on {name}.c");
    output
}

fn context(sender: &str) -> ModuleContext {
    ModuleContext {
        id: "session-1".into(),
        sender: sender.into(),
        recipients: vec!["bob@example.com".into()],
        client_address: "192.0.2.7".into(),
        ..ModuleContext::default()
    }
}

#[test]
fn reject_domain_refuses_only_its_domain_with_its_reply() {
    let dir = tempfile::tempdir().unwrap();
    let library = build("reject_domain", dir.path());
    let modules = Modules::load([(library.as_path(), &["spam.example".to_owned()][..])]).unwrap();

    let rejection = modules
        .validate(Validation::MailFrom, &mut context("x@Spam.Example"))
        .unwrap_err();
    assert_eq!(
        (rejection.code, rejection.text.as_str()),
        (550, "5.7.1 Mail from spam.example is not accepted here")
    );
    assert_eq!(rejection.module, "reject_domain");
    assert!(
        modules
            .validate(Validation::MailFrom, &mut context("x@ok.example"))
            .is_ok()
    );
    // No callback for RCPT: accepted.
    assert!(
        modules
            .validate(Validation::RcptTo, &mut context("x@spam.example"))
            .is_ok()
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
fn metadata_set_at_mail_from_is_seen_at_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let library = build("delivery_audit", dir.path());
    let log = dir.path().join("audit.log");
    let modules =
        Modules::load([(library.as_path(), &[log.to_string_lossy().into_owned()][..])]).unwrap();

    let mut reception = context("alice@example.org");
    modules
        .validate(Validation::MailFrom, &mut reception)
        .unwrap();
    let cid = reception
        .metadata
        .get("correlation_id")
        .cloned()
        .expect("module set correlation_id");
    assert_eq!(cid, "cid-session-1-192.0.2.7");

    // Later, in another process: a context rebuilt from the queued envelope.
    let mut delivery = ModuleContext {
        id: "01QUEUEID".into(),
        metadata: reception.metadata.clone(),
        recipients: vec!["a@x.example".into(), "b@x.example".into()],
        ..ModuleContext::default()
    };
    modules.emit(Event::DeliverySuccess, &mut delivery);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("01QUEUEID {cid} delivered 2 -\n")
    );
}

#[test]
fn nul_bytes_from_a_module_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let library = build("nul_bytes", dir.path());
    let modules = Modules::load([(library.as_path(), &[][..])]).unwrap();

    let mut accepted = context("someone@test.example");
    modules
        .validate(Validation::MailFrom, &mut accepted)
        .unwrap();
    assert_eq!(
        accepted.metadata.get("nul_test").map(String::as_str),
        Some("abc")
    );

    let rejection = modules
        .validate(Validation::MailFrom, &mut context("nul@test.example"))
        .unwrap_err();
    assert_eq!(
        (rejection.code, rejection.text.as_str()),
        (554, "5.7.1 beforeafter")
    );
}

#[test]
fn crash_on_rcpt_builds_and_wants_only_rcpt_to() {
    let dir = tempfile::tempdir().unwrap();
    let library = build("crash_on_rcpt", dir.path());
    let modules = Modules::load([(library.as_path(), &[][..])]).unwrap();
    assert!(modules.wants(Validation::RcptTo));
    assert!(!modules.wants(Validation::Data) && !modules.wants(Validation::MailFrom));
    // Other recipients pass; crash@sink.test would abort this test process.
    assert!(
        modules
            .validate(Validation::RcptTo, &mut context("a@client.test"))
            .is_ok()
    );
}
