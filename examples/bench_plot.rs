//! Time the figures: `cargo run --release --example bench_plot -- [DPI] [FORMAT] [REPEATS] [DIR]`
//! (defaults: 300 dpi, jpg, 9 repeats, a temporary folder). Prints the median and fastest time per
//! figure; openretina 1.1.1 takes about 0.63 s per MEI figure and 0.39 s per weight figure at 300 dpi.

use retina::plot::bench::bench_figures;
use retina::plot::{FigureStyle, ImageFormat};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}

fn run() -> retina::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dpi = match args.first() {
        Some(d) => d.parse().map_err(|_| retina::Error::new(format!("DPI must be a whole number, got '{d}'")))?,
        None => 300,
    };
    let format: ImageFormat = args.get(1).map(|f| f.parse()).transpose()?.unwrap_or_default();
    let repeats = match args.get(2) {
        Some(r) => r.parse().map_err(|_| retina::Error::new(format!("REPEATS must be a whole number, got '{r}'")))?,
        None => 9,
    };
    let dir = retina::output::output_folder(args.get(3).map(String::as_str), "bench-plot")?;

    let style = FigureStyle { format, dpi };
    println!("{dpi} dpi, {}, {repeats} repeats, files in {}", format.extension(), dir.display());
    for t in bench_figures(&style, repeats, &dir)? {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        println!(
            "{:<15} median {:>7.1} ms (numbers and layout {:>5.1}, pixels and encoding {:>6.1})   fastest {:>7.1} ms   {:>9} bytes",
            t.figure,
            ms(t.median),
            ms(t.median_layout),
            ms(t.median_encode),
            ms(t.fastest),
            t.file_bytes
        );
    }
    Ok(())
}
