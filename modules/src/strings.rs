//! Strings across the FFI boundary. Every string handed to a module is
//! malloc'ed, NUL-terminated and free of embedded NULs (they are removed,
//! and `len` counts what is left), so C code can use it as a C string.
//! Strings from a module are C strings, read up to their NUL.

use std::ffi::{CStr, c_char};
use std::ptr;

use crate::abi::{FfiString, FfiStringVector};

/// Removes NUL bytes.
pub fn sanitize(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().copied().filter(|b| *b != 0).collect()
}

/// A malloc'ed copy of `bytes` without NULs. On allocation failure the
/// result has a null `data` and length 0, which C code can test.
pub fn to_ffi_string(bytes: &[u8]) -> FfiString {
    let clean = sanitize(bytes);
    // SAFETY: malloc of len+1 bytes; exactly that many are written.
    unsafe {
        let data = libc::malloc(clean.len() + 1).cast::<u8>();
        if data.is_null() {
            return FfiString {
                len: 0,
                data: ptr::null_mut(),
            };
        }
        ptr::copy_nonoverlapping(clean.as_ptr(), data, clean.len());
        *data.add(clean.len()) = 0;
        FfiString {
            len: clean.len(),
            data: data.cast(),
        }
    }
}

/// An empty string (a valid pointer to a NUL).
pub fn empty() -> FfiString {
    to_ffi_string(b"")
}

/// A malloc'ed vector of strings.
pub fn to_ffi_vector<S: AsRef<[u8]>>(items: &[S]) -> FfiStringVector {
    let size = std::mem::size_of::<FfiString>() * items.len().max(1);
    // SAFETY: malloc of items.len() strings; each slot is written once.
    unsafe {
        let data = libc::malloc(size).cast::<FfiString>();
        if data.is_null() {
            return FfiStringVector {
                len: 0,
                data: ptr::null_mut(),
            };
        }
        for (index, item) in items.iter().enumerate() {
            data.add(index).write(to_ffi_string(item.as_ref()));
        }
        FfiStringVector {
            len: items.len(),
            data,
        }
    }
}

/// A C string from a module, as UTF-8 (lossy); `None` for a null pointer.
///
/// # Safety
/// `text` must be null or point to a NUL-terminated string.
pub unsafe fn from_module(text: *const c_char) -> Option<String> {
    if text.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(text) }.to_bytes();
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// Frees what [`to_ffi_string`] returned: `em_free_string`.
///
/// # Safety
/// `string` must come from [`to_ffi_string`] (or be null) and not have
/// been freed.
pub unsafe fn free_string(string: FfiString) {
    // SAFETY: data was allocated with malloc, or is null.
    unsafe { libc::free(string.data.cast()) };
}

/// Frees what [`to_ffi_vector`] returned: `em_free_string_vector`.
///
/// # Safety
/// As for [`free_string`], for the vector and each of its strings.
pub unsafe fn free_vector(vector: FfiStringVector) {
    if vector.data.is_null() {
        return;
    }
    // SAFETY: `data` holds `len` strings made by to_ffi_string, and was
    // allocated with malloc.
    unsafe {
        for index in 0..vector.len {
            free_string(vector.data.add(index).read());
        }
        libc::free(vector.data.cast());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(string: &FfiString) -> &[u8] {
        // SAFETY: string.data holds string.len bytes and a NUL.
        unsafe { CStr::from_ptr(string.data) }.to_bytes()
    }

    #[test]
    fn embedded_nuls_are_removed_and_len_matches() {
        let s = to_ffi_string(b"test\0with\0nulls");
        assert_eq!(s.len, 13);
        assert_eq!(text(&s), b"testwithnulls");
        unsafe { free_string(s) };
    }

    #[test]
    fn only_nuls_give_a_valid_empty_string() {
        for input in [&b"\0\0\0"[..], b"", b"\0"] {
            let s = to_ffi_string(input);
            assert_eq!(s.len, 0);
            assert!(!s.data.is_null());
            unsafe { free_string(s) };
        }
    }

    #[test]
    fn vectors_hold_sanitised_copies() {
        let v = to_ffi_vector(&["a\0b", "", "c"]);
        assert_eq!(v.len, 3);
        // SAFETY: v.data holds v.len strings.
        let items: Vec<Vec<u8>> = (0..v.len)
            .map(|i| text(unsafe { &*v.data.add(i) }).to_vec())
            .collect();
        assert_eq!(items, [b"ab".to_vec(), Vec::new(), b"c".to_vec()]);
        unsafe { free_vector(v) };
        let none = to_ffi_vector::<&str>(&[]);
        assert_eq!(none.len, 0);
        assert!(!none.data.is_null());
        unsafe { free_vector(none) };
    }

    #[test]
    fn module_strings_are_read_to_their_nul() {
        let raw = b"abc\0def";
        assert_eq!(
            unsafe { from_module(raw.as_ptr().cast()) }.as_deref(),
            Some("abc")
        );
        assert_eq!(unsafe { from_module(ptr::null()) }, None);
    }
}
