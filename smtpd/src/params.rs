//! The ESMTP parameters of MAIL and RCPT, checked and typed: SIZE (RFC
//! 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531), RET/ENVID/NOTIFY/ORCPT
//! (DSN, RFC 3461), REQUIRETLS (RFC 8689) and AUTH (RFC 4954). Pure, so
//! that it is easy to test.

use empath_common::queue::{MessageOptions, Notify, Ret};
use empath_common::smtp::Reply;

use crate::parser::Param;

/// The declared body type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Body,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// RFC 8689; only accepted on a TLS session (see the session).
    pub requiretls: bool,
}

impl MailParams {
    /// What the queue keeps and passes on to the next hop.
    pub fn options(&self) -> MessageOptions {
        MessageOptions {
            body: match self.body {
                Body::SevenBit => empath_common::queue::Body::SevenBit,
                Body::EightBitMime => empath_common::queue::Body::EightBitMime,
            },
            requiretls: self.requiretls,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    pub notify: Notify,
    /// `addr-type;address`, xtext-decoded.
    pub orcpt: Option<String>,
}

/// Longest ENVID (RFC 3461 section 4.4) and ORCPT we keep.
const MAX_DSN_VALUE: usize = 500;

fn bad(text: &str) -> Reply {
    Reply::new(501, "5.5.4", format!("Syntax: {text}"))
}

fn unsupported(keyword: &str) -> Reply {
    Reply::new(555, "5.5.4", format!("Unsupported parameter {keyword}"))
}

fn once<T>(slot: &mut Option<T>, value: T, keyword: &str) -> Result<(), Reply> {
    if slot.is_some() {
        return Err(bad(&format!("{keyword} given twice")));
    }
    *slot = Some(value);
    Ok(())
}

pub fn mail_params(params: &[Param]) -> Result<MailParams, Reply> {
    let (mut size, mut body, mut smtputf8, mut ret, mut envid, mut auth) =
        (None, None, None, None, None, None);
    let mut requiretls = None;
    for param in params {
        let value = param.value.as_deref();
        let keyword = param.keyword.as_str();
        match (keyword, value) {
            ("SIZE", Some(v)) => {
                let declared = v.parse::<u64>().map_err(|_| bad("SIZE=<number>"))?;
                once(&mut size, declared, keyword)?;
            }
            ("BODY", Some(v)) => {
                let kind = if v.eq_ignore_ascii_case("7BIT") {
                    Body::SevenBit
                } else if v.eq_ignore_ascii_case("8BITMIME") {
                    Body::EightBitMime
                } else {
                    return Err(Reply::new(555, "5.5.4", "Syntax: BODY=7BIT|8BITMIME"));
                };
                once(&mut body, kind, keyword)?;
            }
            ("SMTPUTF8", None) => once(&mut smtputf8, true, keyword)?,
            ("REQUIRETLS", None) => once(&mut requiretls, true, keyword)?,
            ("RET", Some(v)) => {
                let kind = if v.eq_ignore_ascii_case("FULL") {
                    Ret::Full
                } else if v.eq_ignore_ascii_case("HDRS") {
                    Ret::Headers
                } else {
                    return Err(bad("RET=FULL|HDRS"));
                };
                once(&mut ret, kind, keyword)?;
            }
            ("ENVID", Some(v)) => {
                let decoded = xtext_decode(v)
                    .filter(|d| d.len() <= MAX_DSN_VALUE)
                    .ok_or_else(|| bad("ENVID=<xtext>"))?;
                once(&mut envid, decoded, keyword)?;
            }
            // Who submitted the message originally; we trust no one's
            // word for it, so it is checked for syntax and dropped.
            ("AUTH", Some(v)) => {
                xtext_decode(v).ok_or_else(|| bad("AUTH=<xtext>"))?;
                once(&mut auth, (), keyword)?;
            }
            _ => return Err(unsupported(keyword)),
        }
    }
    Ok(MailParams {
        size,
        body: body.unwrap_or_default(),
        smtputf8: smtputf8.unwrap_or(false),
        ret,
        envid,
        requiretls: requiretls.unwrap_or(false),
    })
}

pub fn rcpt_params(params: &[Param]) -> Result<RcptParams, Reply> {
    let (mut notify, mut orcpt) = (None, None);
    for param in params {
        let keyword = param.keyword.as_str();
        match (keyword, param.value.as_deref()) {
            ("NOTIFY", Some(v)) => {
                let parsed = parse_notify(v)
                    .ok_or_else(|| bad("NOTIFY=NEVER or NOTIFY=SUCCESS,FAILURE,DELAY"))?;
                once(&mut notify, parsed, keyword)?;
            }
            ("ORCPT", Some(v)) => {
                let parsed = parse_orcpt(v).ok_or_else(|| bad("ORCPT=addr-type;xtext"))?;
                once(&mut orcpt, parsed, keyword)?;
            }
            _ => return Err(unsupported(keyword)),
        }
    }
    Ok(RcptParams {
        notify: notify.unwrap_or_default(),
        orcpt,
    })
}

/// `NEVER`, or a list of `SUCCESS`, `FAILURE`, `DELAY` (RFC 3461 4.1).
fn parse_notify(value: &str) -> Option<Notify> {
    let mut notify = Notify {
        explicit: true,
        success: false,
        failure: false,
        delay: false,
    };
    if value.eq_ignore_ascii_case("NEVER") {
        return Some(notify);
    }
    for word in value.split(',') {
        let flag = if word.eq_ignore_ascii_case("SUCCESS") {
            &mut notify.success
        } else if word.eq_ignore_ascii_case("FAILURE") {
            &mut notify.failure
        } else if word.eq_ignore_ascii_case("DELAY") {
            &mut notify.delay
        } else {
            return None;
        };
        if *flag {
            return None;
        }
        *flag = true;
    }
    Some(notify)
}

/// `addr-type;xtext` (RFC 3461 4.2), kept as `addr-type;decoded`.
fn parse_orcpt(value: &str) -> Option<String> {
    let (kind, address) = value.split_once(';')?;
    let kind_ok = !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let address = xtext_decode(address)?;
    (kind_ok && !address.is_empty() && address.len() <= MAX_DSN_VALUE)
        .then(|| format!("{kind};{address}"))
}

/// Decodes xtext (RFC 3461 section 4): `+XX` is a byte in upper-case hex.
/// The result must be printable text (UTF-8 is allowed, controls are not),
/// since it ends up in DSNs.
pub fn xtext_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'+' {
            let hex = bytes.get(index + 1..index + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if hex.bytes().any(|b| b.is_ascii_lowercase()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else if byte == b'=' || !(33..=126).contains(&byte) {
            return None;
        } else {
            out.push(byte);
            index += 1;
        }
    }
    let decoded = String::from_utf8(out).ok()?;
    (!decoded.chars().any(char::is_control)).then_some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(text: &[(&str, Option<&str>)]) -> Vec<Param> {
        text.iter()
            .map(|(k, v)| Param {
                keyword: (*k).to_owned(),
                value: v.map(str::to_owned),
            })
            .collect()
    }

    fn code<T>(result: Result<T, Reply>) -> u16 {
        result.err().map_or(0, |reply| reply.code)
    }

    #[test]
    fn mail_parameters_are_typed() {
        let parsed = mail_params(&params(&[
            ("SIZE", Some("1000")),
            ("BODY", Some("8bitmime")),
            ("SMTPUTF8", None),
            ("RET", Some("HDRS")),
            ("ENVID", Some("QQ314159+2Bx")),
            ("AUTH", Some("<>")),
            ("REQUIRETLS", None),
        ]));
        assert_eq!(
            parsed,
            Ok(MailParams {
                size: Some(1000),
                body: Body::EightBitMime,
                smtputf8: true,
                ret: Some(Ret::Headers),
                envid: Some("QQ314159+x".into()),
                requiretls: true,
            })
        );
        assert_eq!(
            parsed.map(|p| p.options()),
            Ok(MessageOptions {
                body: empath_common::queue::Body::EightBitMime,
                requiretls: true
            })
        );
        assert_eq!(
            code(mail_params(&params(&[("REQUIRETLS", Some("x"))]))),
            555
        );
        assert_eq!(code(mail_params(&params(&[("SIZE", Some("x"))]))), 501);
        assert_eq!(
            code(mail_params(&params(&[("BODY", Some("BINARYMIME"))]))),
            555
        );
        assert_eq!(code(mail_params(&params(&[("RET", Some("ALL"))]))), 501);
        assert_eq!(code(mail_params(&params(&[("FOO", None)]))), 555);
        assert_eq!(code(mail_params(&params(&[("SMTPUTF8", Some("x"))]))), 555);
        assert_eq!(
            code(mail_params(&params(&[
                ("RET", Some("FULL")),
                ("RET", Some("FULL"))
            ]))),
            501
        );
    }

    #[test]
    fn rcpt_parameters_are_typed() {
        let parsed = rcpt_params(&params(&[
            ("NOTIFY", Some("SUCCESS,DELAY")),
            ("ORCPT", Some("rfc822;bob+2Bdsn@b.example")),
        ]));
        assert_eq!(
            parsed,
            Ok(RcptParams {
                notify: Notify {
                    explicit: true,
                    success: true,
                    failure: false,
                    delay: true
                },
                orcpt: Some("rfc822;bob+dsn@b.example".into()),
            })
        );
        let never = rcpt_params(&params(&[("NOTIFY", Some("never"))]));
        assert_eq!(
            never.map(|p| (p.notify.explicit, p.notify.failure)),
            Ok((true, false))
        );
        let default = rcpt_params(&[]).map(|p| p.notify);
        assert_eq!(default, Ok(Notify::default()));
        for bad in ["NEVER,SUCCESS", "SUCCESS,SUCCESS", "", "ALWAYS"] {
            assert_eq!(
                code(rcpt_params(&params(&[("NOTIFY", Some(bad))]))),
                501,
                "{bad}"
            );
        }
        for bad in ["bob@b.example", ";bob@b.example", "rfc822;", "rfc822;a+0Ab"] {
            assert_eq!(
                code(rcpt_params(&params(&[("ORCPT", Some(bad))]))),
                501,
                "{bad}"
            );
        }
    }

    #[test]
    fn xtext() {
        assert_eq!(xtext_decode("a+2Bb+3Dc").as_deref(), Some("a+b=c"));
        assert_eq!(xtext_decode("caf+C3+A9").as_deref(), Some("caf\u{e9}"));
        for bad in ["+2b", "+2", "a=b", "+00", "+FF"] {
            assert_eq!(xtext_decode(bad), None, "{bad}");
        }
    }
}
