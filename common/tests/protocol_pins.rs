//! Pins the wire encoding of the frames the daemons exchange, so that a
//! change to one cannot ship without a new `ipc::PROTOCOL_VERSION`: the
//! hello then makes daemons of the old and the new version refuse each
//! other clearly during an upgrade, instead of misreading each other's
//! frames (postcard encodes fields by position).
//!
//! When this test fails because you changed a protocol type: bump
//! `PROTOCOL_VERSION` in common/src/ipc.rs, then set `PINNED_VERSION` and
//! the pinned bytes below to what the failure prints.

use std::collections::BTreeMap;

use empath_common::control::{ControlEnvelope, ControlRequest, ControlResponse, QueueCommand};
use empath_common::ipc::{Hello, PROTOCOL_VERSION};
use empath_common::protocol::{
    AnvilReply, AnvilRequest, BounceKind, BounceReply, BounceRequest, CleanupReply, CleanupRequest,
    DeliveryJob, DeliveryReport, JobRecipient, Outcome, QmgrNotice, RecipientResult, ShowqReply,
    ShowqRequest, Submission,
};
use empath_common::queue::lister::{MailqEntry, MailqRecipient};
use empath_common::queue::{ClientInfo, DsnParams, QueueId, QueueState, Recipient};
use empath_common::smtp::Reply;
use serde::Serialize;

/// The version the pins below belong to.
const PINNED_VERSION: u32 = 6;

fn hex<T: Serialize>(value: &T) -> String {
    postcard::to_stdvec(value)
        .expect("encodes")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn id() -> QueueId {
    "01JCXYZ5ABCDEFGHJKMNPQRSTV".parse().expect("a queue id")
}

/// One sample of every frame type, by name.
fn samples() -> Vec<(&'static str, String)> {
    let submission = Submission {
        sender: "a@b.example".into(),
        recipients: vec![Recipient::new("c@d.example")],
        client: ClientInfo {
            addr: "192.0.2.1:25".into(),
            helo: "client".into(),
            name: None,
            protocol: "ESMTP".into(),
            tls: None,
            authenticated_as: None,
        },
        dsn: DsnParams::default(),
        metadata: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        smtputf8: false,
        queue_id: Some(id()),
        options: Default::default(),
    };
    let job = DeliveryJob {
        id: id(),
        sender: "a@b.example".into(),
        domain: "d.example".into(),
        recipients: vec![JobRecipient {
            index: 0,
            address: "c@d.example".into(),
        }],
        content_size: 42,
        smtputf8: false,
        active_since_ms: 1_700_000_000_000,
        attempt: 1,
        pass_on: Default::default(),
    };
    let report = DeliveryReport {
        results: vec![RecipientResult {
            index: 0,
            outcome: Outcome::Delivered,
            remote: Some("mx:25".into()),
            reply: Reply::new(250, "2.0.0", "ok"),
        }],
        destination_failed: false,
        dsn_passed_on: Default::default(),
    };
    vec![
        ("Hello", hex(&Hello::ours())),
        (
            "CleanupRequest::Begin",
            hex(&CleanupRequest::Begin(submission)),
        ),
        ("CleanupRequest::End", hex(&CleanupRequest::End)),
        (
            "CleanupReply::Queued",
            hex(&CleanupReply::Queued { id: id() }),
        ),
        (
            "AnvilRequest::Acquire",
            hex(&AnvilRequest::Acquire("192.0.2.1".parse().expect("ip"))),
        ),
        ("AnvilReply::TooManyFromIp", hex(&AnvilReply::TooManyFromIp)),
        ("QmgrNotice::Incoming", hex(&QmgrNotice::Incoming(id()))),
        ("DeliveryJob", hex(&job)),
        ("DeliveryReport", hex(&report)),
        (
            "BounceRequest",
            hex(&BounceRequest {
                id: id(),
                state: QueueState::Active,
                kind: BounceKind::Final,
            }),
        ),
        (
            "BounceReply::Done",
            hex(&BounceReply::Done { dsn: Some(id()) }),
        ),
        (
            "ControlEnvelope",
            hex(&ControlEnvelope {
                token: None,
                request: ControlRequest::Queue(QueueCommand::Retry {
                    id: id(),
                    force: true,
                }),
            }),
        ),
        (
            "ControlResponse::Done",
            hex(&ControlResponse::Done("x".into())),
        ),
        ("ShowqRequest::Mailq", hex(&ShowqRequest::Mailq)),
        (
            "ShowqReply::Entries",
            hex(&ShowqReply::Entries(vec![MailqEntry {
                id: id(),
                state: QueueState::Deferred,
                size: 1500,
                arrival: 1_700_000_000,
                sender: "a@b.example".into(),
                recipients: vec![MailqRecipient {
                    address: "c@d.example".into(),
                    reason: Some("451 4.4.1 no answer".into()),
                }],
            }])),
        ),
        ("ShowqReply::End", hex(&ShowqReply::End)),
    ]
}

/// What `samples()` encoded to at `PINNED_VERSION`.
const PINS: &[(&str, &str)] = &[
    ("Hello", "454d504806"),
    (
        "CleanupRequest::Begin",
        "000b6140622e6578616d706c65010b6340642e6578616d706c650000000101000c3139322e302e322e313a323506636c69656e74000545534d54500000000001016b01760001dbcef1ebd6f494a3f8b98ddbd4f2fb9d93030000",
    ),
    ("CleanupRequest::End", "04"),
    (
        "CleanupReply::Queued",
        "00dbcef1ebd6f494a3f8b98ddbd4f2fb9d9303",
    ),
    ("AnvilRequest::Acquire", "0000c0000201"),
    ("AnvilReply::TooManyFromIp", "02"),
    (
        "QmgrNotice::Incoming",
        "00dbcef1ebd6f494a3f8b98ddbd4f2fb9d9303",
    ),
    (
        "DeliveryJob",
        "dbcef1ebd6f494a3f8b98ddbd4f2fb9d93030b6140622e6578616d706c6509642e6578616d706c6501000b6340642e6578616d706c652a0080d095ffbc31010000000000",
    ),
    (
        "DeliveryReport",
        "01000001056d783a3235fa010105322e302e30026f6b0000",
    ),
    ("BounceRequest", "dbcef1ebd6f494a3f8b98ddbd4f2fb9d93030100"),
    (
        "BounceReply::Done",
        "0001dbcef1ebd6f494a3f8b98ddbd4f2fb9d9303",
    ),
    (
        "ControlEnvelope",
        "000003dbcef1ebd6f494a3f8b98ddbd4f2fb9d930301",
    ),
    ("ControlResponse::Done", "010178"),
    ("ShowqRequest::Mailq", "00"),
    (
        "ShowqReply::Entries",
        "0001dbcef1ebd6f494a3f8b98ddbd4f2fb9d930302dc0b80e2cfaa060b6140622e6578616d706c65010b6340642e6578616d706c65011334353120342e342e31206e6f20616e73776572",
    ),
    ("ShowqReply::End", "01"),
];

#[test]
fn frame_encodings_change_only_with_the_protocol_version() {
    let now = samples();
    let printed: String = now
        .iter()
        .map(|(name, bytes)| format!("    (\"{name}\", \"{bytes}\"),\n"))
        .collect();
    assert_eq!(
        PROTOCOL_VERSION, PINNED_VERSION,
        "PROTOCOL_VERSION changed: set PINNED_VERSION to it and the pins to:\n{printed}"
    );
    let pinned: Vec<(&str, String)> = PINS.iter().map(|(n, b)| (*n, (*b).to_owned())).collect();
    assert_eq!(
        now, pinned,
        "a frame's encoding changed: bump ipc::PROTOCOL_VERSION, then set PINNED_VERSION and the pins to:\n{printed}"
    );
}
