//! Helpers shared by this crate's measuring examples (not an example
//! itself: cargo builds only `examples/*.rs` and `examples/*/main.rs`).

/// The median of `values` (the mean of the middle two for an even count):
/// steadier than the mean on a shared machine, where one run in several
/// loses its core to another process.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
