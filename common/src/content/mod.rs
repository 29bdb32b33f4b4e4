//! Message content on its way through Empath: the canonical form cleanup
//! gives every message ([`shape`]) and the DATA encoding that the SMTP
//! client sends ([`wire`]).

pub mod shape;
pub mod wire;
