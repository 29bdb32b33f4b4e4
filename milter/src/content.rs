//! A message as the milter protocol shows it: header fields one by one
//! (name, and value with folded lines joined by `\n`, as Sendmail sends
//! them), then the body in chunks.

use crate::protocol::MAX_BODY_CHUNK;

/// One header field for an `SMFIC_HEADER` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    pub name: String,
    /// The value after the colon, without the final line end. Folded
    /// lines are joined with `\n`.
    pub value: Vec<u8>,
}

/// Splits `message` into its header fields and its body. The header
/// section ends at the first empty line; a line that is neither a field
/// nor a continuation is skipped (it cannot be shown as a field).
pub fn split(message: &[u8]) -> (Vec<HeaderField>, &[u8]) {
    let mut fields: Vec<HeaderField> = Vec::new();
    let mut position = 0;
    while position < message.len() {
        let end = message[position..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(message.len(), |offset| position + offset + 1);
        let line = &message[position..end];
        let content = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if content.is_empty() && line.ends_with(b"\n") {
            return (fields, &message[end..]);
        }
        position = end;
        if matches!(content.first(), Some(b' ' | b'\t')) {
            if let Some(field) = fields.last_mut() {
                field.value.push(b'\n');
                field.value.extend_from_slice(content);
            }
            continue;
        }
        let Some(colon) = content.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = content[..colon].trim_ascii();
        if name.is_empty() {
            continue;
        }
        fields.push(HeaderField {
            name: String::from_utf8_lossy(name).into_owned(),
            value: content[colon + 1..].to_vec(),
        });
    }
    (fields, &[])
}

/// The value as a milter wants it: without the one space Sendmail eats
/// after the colon, unless the milter asked for leading spaces.
pub fn value_for_milter(value: &[u8], leading_space: bool) -> &[u8] {
    if leading_space {
        value
    } else {
        value.strip_prefix(b" ").unwrap_or(value)
    }
}

/// The body in `SMFIC_BODY` chunks.
pub fn body_chunks(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.chunks(MAX_BODY_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_their_folding_as_newlines() {
        let message = b"Subject: hello\r\n world\r\nX-Empty:\r\nnot a field\r\nTo:  b@example.org\r\n\r\nbody\r\n";
        let (fields, body) = split(message);
        assert_eq!(
            fields,
            vec![
                HeaderField {
                    name: "Subject".into(),
                    value: b" hello\n world".to_vec()
                },
                HeaderField {
                    name: "X-Empty".into(),
                    value: Vec::new()
                },
                HeaderField {
                    name: "To".into(),
                    value: b"  b@example.org".to_vec()
                },
            ]
        );
        assert_eq!(body, b"body\r\n");
        assert_eq!(value_for_milter(&fields[2].value, false), b" b@example.org");
        assert_eq!(value_for_milter(&fields[2].value, true), b"  b@example.org");
    }

    #[test]
    fn a_message_without_a_body_has_an_empty_one() {
        let (fields, body) = split(b"A: 1\r\nB: 2\r\n");
        assert_eq!(fields.len(), 2);
        assert!(body.is_empty());
        let (fields, body) = split(b"\r\nonly body\r\n");
        assert!(fields.is_empty());
        assert_eq!(body, b"only body\r\n");
    }

    #[test]
    fn long_bodies_come_in_protocol_sized_chunks() {
        let body = vec![b'x'; MAX_BODY_CHUNK * 2 + 10];
        let sizes: Vec<usize> = body_chunks(&body).map(<[u8]>::len).collect();
        assert_eq!(sizes, [MAX_BODY_CHUNK, MAX_BODY_CHUNK, 10]);
    }
}
