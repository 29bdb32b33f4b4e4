//! Turning one event into one line, in the chosen format.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::LogFormat;
use crate::queue::QueueId;

/// The field that carries an event's line in Postfix's words (see
/// [`crate::maillog`]). The syslog format writes it instead of the
/// message; the other formats leave it out, since the structured fields
/// say the same.
pub const POSTFIX_FIELD: &str = "postfix";
/// Overrides the second half of the syslog tag for one event, as for the
/// `empath/pickup` lines of local submissions.
pub const PROGRAM_FIELD: &str = "syslog_program";
/// The part of the system an event belongs to (`smtp`, `delivery`,
/// `spool`, ...), as the seeds' queries filter on it. Set for every event
/// from the daemon's name unless the event names its own.
pub const COMPONENT_FIELD: &str = "component";
/// The message's trace ID ([`crate::queue::QueueId::trace_id_hex`]),
/// added to every event that names a queue ID in `message_id`, so a log
/// line leads to the message's trace and back.
pub const TRACE_ID_FIELD: &str = "trace_id";
/// The span an event was written in (see
/// [`crate::traces::Span::log_context`]).
pub const SPAN_ID_FIELD: &str = "span_id";
/// The field that names a message's queue ID in every event.
const MESSAGE_ID_FIELD: &str = "message_id";

/// How the lines of one process are formatted.
pub(super) struct Style {
    pub format: LogFormat,
    pub service: &'static str,
    pub component: &'static str,
    pub syslog_name: String,
    pub pid: u32,
}

/// A field value as recorded.
enum Value {
    Text(String),
    /// Written by `Debug` (or `Display` through `%`): not quoted in text.
    Shown(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl Value {
    fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Text(text) | Self::Shown(text) => serde_json::Value::String(text.clone()),
            Self::I64(n) => (*n).into(),
            Self::U64(n) => (*n).into(),
            Self::F64(n) => serde_json::Number::from_f64(*n)
                .map_or_else(|| serde_json::Value::String(n.to_string()), Into::into),
            Self::Bool(b) => (*b).into(),
        }
    }

    fn write_text(&self, out: &mut impl fmt::Write) {
        let _ = match self {
            Self::Text(text) => write!(out, "{text:?}"),
            Self::Shown(text) => out.write_str(text),
            Self::I64(n) => write!(out, "{n}"),
            Self::U64(n) => write!(out, "{n}"),
            Self::F64(n) => write!(out, "{n}"),
            Self::Bool(b) => write!(out, "{b}"),
        };
    }
}

/// The fields of one event, in the order they were written.
#[derive(Default)]
struct Fields {
    /// The Postfix line is formatted only for the format that writes it.
    wants_postfix: bool,
    message: String,
    postfix: Option<String>,
    program: Option<String>,
    others: Vec<(&'static str, Value)>,
}

impl Fields {
    fn for_format(format: LogFormat) -> Self {
        Self {
            wants_postfix: format == LogFormat::Syslog,
            ..Self::default()
        }
    }

    fn record(&mut self, field: &Field, value: Value) {
        match (field.name(), value) {
            ("message", Value::Text(text) | Value::Shown(text)) => self.message = text,
            (POSTFIX_FIELD, Value::Text(text) | Value::Shown(text)) => self.postfix = Some(text),
            (PROGRAM_FIELD, Value::Text(text) | Value::Shown(text)) => self.program = Some(text),
            (name, value) => self.others.push((name, value)),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.others.iter().any(|(n, _)| *n == name)
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.others.iter().find_map(|(n, value)| match value {
            Value::Text(text) | Value::Shown(text) if *n == name => Some(text.as_str()),
            _ => None,
        })
    }

    /// Adds the trace context: `trace_id` derived from the queue ID in
    /// `message_id`, else the enclosing span's; and that span's `span_id`.
    fn add_trace_context(&mut self, span: Option<SpanIds>) {
        if !self.has(TRACE_ID_FIELD) {
            let derived = self
                .text(MESSAGE_ID_FIELD)
                .and_then(|id| id.parse::<QueueId>().ok())
                .map(QueueId::trace_id_hex);
            if let Some(trace_id) = derived.or_else(|| span.as_ref().map(|s| s.trace_id.clone())) {
                self.others.push((TRACE_ID_FIELD, Value::Shown(trace_id)));
            }
        }
        if let Some(span) = span
            && !self.has(SPAN_ID_FIELD)
        {
            self.others
                .push((SPAN_ID_FIELD, Value::Shown(span.span_id)));
        }
    }
}

/// The trace context of an exported span, as its `tracing` span recorded
/// it (see [`crate::traces::Span::log_context`]).
struct SpanIds {
    trace_id: String,
    span_id: String,
}

/// The innermost enclosing span with a trace context. The fields were
/// recorded by the default field formatter (`trace_id=... span_id=...`,
/// hex, so no quoting).
fn span_ids<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<SpanIds>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let scope = ctx.event_scope()?;
    scope.into_iter().find_map(|span| {
        let extensions = span.extensions();
        span_ids_in(&extensions.get::<FormattedFields<N>>()?.fields)
    })
}

/// `trace_id` and `span_id` in a span's recorded fields.
fn span_ids_in(fields: &str) -> Option<SpanIds> {
    let value = |name: &str| {
        fields.split_whitespace().find_map(|pair| {
            pair.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        })
    };
    Some(SpanIds {
        trace_id: value(TRACE_ID_FIELD)?,
        span_id: value(SPAN_ID_FIELD)?,
    })
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == POSTFIX_FIELD && !self.wants_postfix {
            return;
        }
        self.record(field, Value::Text(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, Value::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, Value::U64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.record(field, Value::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, Value::Bool(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // The mail log's Postfix lines are lazy (see crate::maillog): not
        // formatting one is most of what an event costs in other formats.
        if field.name() == POSTFIX_FIELD && !self.wants_postfix {
            return;
        }
        self.record(field, Value::Shown(format!("{value:?}")));
    }
}

/// Syslog severities (RFC 5424 section 6.2.1) and the facility mail.
const LOG_MAIL: u8 = 2 << 3;

fn severity(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S, N> FormatEvent<S, N> for Style
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::for_format(self.format);
        event.record(&mut fields);
        fields.add_trace_context(span_ids(ctx));
        let meta = event.metadata();
        let line = match self.format {
            // Written straight into the line: the commonest format, and
            // one event per message per daemon at least.
            LogFormat::Human => {
                self.human(&mut writer, meta, &fields)?;
                return writeln!(writer);
            }
            LogFormat::Json => self.json(ctx, meta, &fields),
            LogFormat::Syslog => self.syslog(*meta.level(), &fields),
        };
        writeln!(writer, "{line}")
    }
}

impl Style {
    /// The event's module path, with the shared library's name replaced by
    /// the daemon's (`empath_common::maillog` in smtp-out is
    /// `empath_smtp_out::maillog`): all daemons share one stderr, and the
    /// target is what tells them apart.
    fn target(&self, meta: &tracing::Metadata<'_>) -> String {
        let mut target = String::new();
        let _ = self.write_target(&mut target, meta);
        target
    }

    fn write_target(&self, out: &mut impl fmt::Write, meta: &tracing::Metadata<'_>) -> fmt::Result {
        match meta.target().strip_prefix("empath_common::") {
            Some(module) if self.service != "tool" => {
                out.write_str("empath_")?;
                for c in self.service.chars() {
                    out.write_char(if c == '-' { '_' } else { c })?;
                }
                write!(out, "::{module}")
            }
            _ => out.write_str(meta.target()),
        }
    }

    fn human(
        &self,
        out: &mut impl fmt::Write,
        meta: &tracing::Metadata<'_>,
        fields: &Fields,
    ) -> fmt::Result {
        let now = crate::time::Rfc3339Micros(crate::time::unix_now_micros());
        write!(out, "{now} {:>5} ", meta.level())?;
        self.write_target(out, meta)?;
        write!(out, ": {}", fields.message)?;
        for (name, value) in &fields.others {
            write!(out, " {name}=")?;
            value.write_text(out);
        }
        Ok(())
    }

    /// The layout of tracing-subscriber's JSON lines, which the seeds'
    /// queries were written against, with `component` added.
    fn json<S, N>(
        &self,
        ctx: &FmtContext<'_, S, N>,
        meta: &tracing::Metadata<'_>,
        fields: &Fields,
    ) -> String
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        let mut object = serde_json::Map::new();
        object.insert(
            "message".to_owned(),
            serde_json::Value::String(fields.message.clone()),
        );
        for (name, value) in &fields.others {
            object.insert((*name).to_owned(), value.to_json());
        }
        if !fields.has(COMPONENT_FIELD) {
            object.insert(COMPONENT_FIELD.to_owned(), self.component.into());
        }
        let mut line = serde_json::Map::new();
        line.insert(
            "timestamp".to_owned(),
            crate::time::rfc3339_micros(crate::time::unix_now_micros()).into(),
        );
        line.insert("level".to_owned(), meta.level().as_str().into());
        line.insert("fields".to_owned(), serde_json::Value::Object(object));
        line.insert("target".to_owned(), self.target(meta).into());
        line.insert("service".to_owned(), self.service.into());
        if let Some(file) = meta.file() {
            line.insert("filename".to_owned(), file.into());
        }
        if let Some(number) = meta.line() {
            line.insert("line_number".to_owned(), number.into());
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<serde_json::Value> = scope
                .from_root()
                .map(|span| {
                    let mut entry = serde_json::json!({ "name": span.name() });
                    if let Some(ids) = span
                        .extensions()
                        .get::<FormattedFields<N>>()
                        .and_then(|f| span_ids_in(&f.fields))
                    {
                        entry["trace_id"] = ids.trace_id.into();
                        entry["span_id"] = ids.span_id.into();
                    }
                    entry
                })
                .collect();
            if let Some(current) = spans.last() {
                line.insert("span".to_owned(), current.clone());
            }
            line.insert("spans".to_owned(), serde_json::Value::Array(spans));
        }
        serde_json::Value::Object(line).to_string()
    }

    /// `<PRI>Mmm dd hh:mm:ss empath/smtpd[PID]: text`. The text of a mail
    /// event is its Postfix line; other events get Postfix's `warning: `
    /// or `error: ` prefix by level, then the message and the fields.
    fn syslog(&self, level: Level, fields: &Fields) -> String {
        let program = fields.program.as_deref().unwrap_or(self.service);
        let mut out = format!(
            "<{}>{} {}/{program}[{}]: ",
            LOG_MAIL | severity(level),
            crate::time::syslog_timestamp(crate::time::unix_now()),
            self.syslog_name,
            self.pid
        );
        if let Some(postfix) = &fields.postfix {
            out.push_str(postfix);
            return out;
        }
        match level {
            Level::ERROR => out.push_str("error: "),
            Level::WARN => out.push_str("warning: "),
            _ => {}
        }
        out.push_str(&fields.message);
        for (name, value) in &fields.others {
            let _ = write!(out, " {name}=");
            value.write_text(&mut out);
        }
        out
    }
}
