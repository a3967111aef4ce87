//! Shared code of the command-line tools (benchmarks, inspection).

pub mod bench_copy;
pub mod bench_host;
pub mod pitr;
/// The pagestream client lives with the clone tool, its main user.
pub use pageserver_clone::pagestream_client;

/// Prints one `BENCHMARKS.md` row (`| name | value | unit | floor | ratio | command |`)
/// with two decimals; `floor` None prints `n/a` for floor and ratio.
pub fn print_row(name: &str, value: f64, unit: &str, floor: Option<f64>, command: &str) {
    let (floor_s, ratio_s) = match floor {
        Some(f) => (format!("{f:.2}"), format!("{:.2}", value / f)),
        None => ("n/a".into(), "n/a".into()),
    };
    println!("| {name} | {value:.2} | {unit} | {floor_s} | {ratio_s} | {command} |");
}
