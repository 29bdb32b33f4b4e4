//! libempath.so names itself (its SONAME), as every shared library in a
//! library directory must: plugin modules record that name as what they
//! need, and the dynamic loader finds it in /usr/lib.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libempath.so");
}
