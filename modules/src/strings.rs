//! Strings across the FFI boundary. Every string handed to a module is
//! malloc'ed, NUL-terminated and free of embedded NULs (they are removed,
//! and `len` counts what is left), so C code can use it as a C string.
//! Strings from a module are read by pointer and length and sanitised the
//! same way, so a module cannot smuggle a NUL into Empath.

use std::ptr;

/// `em_string` in empath.h.
#[repr(C)]
#[derive(Debug)]
pub struct EmString {
    pub data: *mut libc::c_char,
    pub len: usize,
}

/// `em_string_vector` in empath.h.
#[repr(C)]
#[derive(Debug)]
pub struct EmStringVector {
    pub data: *mut EmString,
    pub len: usize,
}

/// Removes NUL bytes.
pub fn sanitize(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().copied().filter(|b| *b != 0).collect()
}

/// A malloc'ed copy of `bytes` without NULs. On allocation failure the
/// result has a null `data` and length 0, which C code can test.
pub fn to_em_string(bytes: &[u8]) -> EmString {
    let clean = sanitize(bytes);
    // SAFETY: malloc of len+1 bytes; we write exactly that many.
    unsafe {
        let data = libc::malloc(clean.len() + 1).cast::<u8>();
        if data.is_null() {
            return EmString {
                data: ptr::null_mut(),
                len: 0,
            };
        }
        ptr::copy_nonoverlapping(clean.as_ptr(), data, clean.len());
        *data.add(clean.len()) = 0;
        EmString {
            data: data.cast(),
            len: clean.len(),
        }
    }
}

/// A malloc'ed vector of strings.
pub fn to_em_string_vector<S: AsRef<[u8]>>(items: &[S]) -> EmStringVector {
    let size = std::mem::size_of::<EmString>() * items.len().max(1);
    // SAFETY: malloc of items.len() EmStrings; each slot is written once.
    unsafe {
        let data = libc::malloc(size).cast::<EmString>();
        if data.is_null() {
            return EmStringVector {
                data: ptr::null_mut(),
                len: 0,
            };
        }
        for (index, item) in items.iter().enumerate() {
            data.add(index).write(to_em_string(item.as_ref()));
        }
        EmStringVector {
            data,
            len: items.len(),
        }
    }
}

/// Reads `len` bytes at `data` from a module, without NULs, as UTF-8 (lossy).
///
/// # Safety
/// `data` must be null or valid for reads of `len` bytes.
pub unsafe fn from_module(data: *const libc::c_char, len: usize) -> String {
    if data.is_null() || len == 0 {
        return String::new();
    }
    // SAFETY: the caller guarantees `data` is valid for `len` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
    String::from_utf8_lossy(&sanitize(bytes)).into_owned()
}

/// Frees what [`to_em_string`] returned (used by Rust tests; C code uses
/// `em_free_string`).
///
/// # Safety
/// `s` must come from [`to_em_string`] and not be freed twice.
pub unsafe fn free_em_string(s: EmString) {
    // SAFETY: data was allocated with malloc (or is null).
    unsafe { libc::free(s.data.cast()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_nuls_are_removed_and_len_matches() {
        let s = to_em_string(b"test\0with\0nulls");
        assert_eq!(s.len, 13);
        // SAFETY: s.data holds s.len bytes plus a NUL terminator.
        let text = unsafe { std::ffi::CStr::from_ptr(s.data) };
        assert_eq!(text.to_bytes(), b"testwithnulls");
        unsafe { free_em_string(s) };
    }

    #[test]
    fn only_nuls_give_a_valid_empty_string() {
        let s = to_em_string(b"\0\0\0");
        assert_eq!(s.len, 0);
        assert!(!s.data.is_null());
        unsafe { free_em_string(s) };
    }

    #[test]
    fn module_strings_are_sanitised() {
        let raw = b"a\0b\0c";
        let text = unsafe { from_module(raw.as_ptr().cast(), raw.len()) };
        assert_eq!(text, "abc");
        assert_eq!(unsafe { from_module(std::ptr::null(), 5) }, "");
    }
}
