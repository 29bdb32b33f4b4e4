//! What a next hop must be able to rely on in the DATA stream it gets:
//! RFC 5321 content, checked byte by byte (the check lives with the
//! encoder that guarantees it).

pub use empath_common::content::shape::MAX_LINE;
pub use empath_common::content::wire::check_stream as check_data_stream;
