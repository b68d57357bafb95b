//! What the fuzz targets share.

/// libFuzzer's panic hook aborts on every panic, even one the code under test catches. The
/// model runs the CEL library on a thread named `xene-cel` and turns a panic there into an
/// error (`when.rs`, `on_cel_stack`), so such a panic is printed and the run goes on; any
/// other panic still aborts and is reported as a crash.
pub fn tolerate_caught_cel_panics() {
    let libfuzzer_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("xene-cel") {
            eprintln!("a panic in the CEL library, caught by the model: {info}");
        } else {
            libfuzzer_hook(info);
        }
    }));
}
