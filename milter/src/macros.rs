//! Sendmail macros: the values the MTA tells a milter at each stage.
//! Which macros are sent follows Postfix's `milter_*_macros` defaults,
//! unless the milter names its own in the negotiation.

use std::collections::BTreeMap;

use crate::protocol::MacroStage;

/// Macro values by bare name (`i`, `j`, `client_addr`, `auth_authen`,
/// ...), without the braces of multi-letter names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Macros(BTreeMap<String, String>);

impl Macros {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a macro; `name` with or without braces.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(bare(name).to_owned(), value.into());
    }

    /// Forgets a macro, e.g. `i` when a transaction ends.
    pub fn remove(&mut self, name: &str) {
        self.0.remove(bare(name));
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(bare(name)).map(String::as_str)
    }

    /// The `(name, value)` pairs to send for `names`: the names as listed
    /// (a milter that asks for `{auth_authen}` gets it under that name),
    /// only those with a value, as Postfix does.
    pub fn pairs(&self, names: &[String]) -> Vec<(String, String)> {
        names
            .iter()
            .filter_map(|name| self.get(name).map(|value| (name.clone(), value.to_owned())))
            .collect()
    }
}

fn bare(name: &str) -> &str {
    name.strip_prefix('{')
        .and_then(|n| n.strip_suffix('}'))
        .unwrap_or(name)
}

/// Postfix's default macro lists (`milter_connect_macros` and so on),
/// plus the client's own address, name and port at connect.
pub fn default_names(stage: MacroStage) -> Vec<String> {
    let names: &[&str] = match stage {
        MacroStage::Connect => &[
            "j",
            "{daemon_name}",
            "{daemon_addr}",
            "v",
            "_",
            "{client_addr}",
            "{client_name}",
            "{client_port}",
            "{client_ptr}",
        ],
        MacroStage::Helo => &[
            "{tls_version}",
            "{cipher}",
            "{cipher_bits}",
            "{cert_subject}",
            "{cert_issuer}",
        ],
        MacroStage::Mail => &[
            "i",
            "{auth_type}",
            "{auth_authen}",
            "{auth_author}",
            "{mail_addr}",
            "{mail_host}",
            "{mail_mailer}",
        ],
        MacroStage::Rcpt => &["i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
        MacroStage::Data | MacroStage::EndOfHeaders | MacroStage::EndOfMessage => &["i"],
    };
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// A milter's own list, as sent in the negotiation: names separated by
/// blanks or commas.
pub fn parse_names(list: &str) -> Vec<String> {
    list.split([' ', ',', '\t'])
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_macros_with_values_are_sent_under_the_listed_name() {
        let mut macros = Macros::new();
        macros.set("{client_addr}", "192.0.2.1");
        macros.set("i", "01ABC");
        let names = parse_names("i {client_addr}, client_addr {auth_authen}");
        assert_eq!(
            macros.pairs(&names),
            vec![
                ("i".to_owned(), "01ABC".to_owned()),
                ("{client_addr}".to_owned(), "192.0.2.1".to_owned()),
                ("client_addr".to_owned(), "192.0.2.1".to_owned()),
            ]
        );
        macros.remove("i");
        assert_eq!(macros.get("i"), None);
    }

    #[test]
    fn defaults_follow_postfix() {
        assert!(default_names(MacroStage::Mail).contains(&"{auth_authen}".to_owned()));
        assert_eq!(default_names(MacroStage::EndOfMessage), ["i"]);
        assert!(default_names(MacroStage::Helo).contains(&"{tls_version}".to_owned()));
    }
}
