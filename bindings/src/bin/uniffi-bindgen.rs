//! The workspace's `uniffi-bindgen`: generates Kotlin, Swift and Python bindings from
//! the built `outpost_ffi` library (library mode), so the generator always matches the
//! uniffi version the library was built with.

fn main() {
    uniffi::uniffi_bindgen_main()
}
