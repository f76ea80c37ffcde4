//! Optimise every MEI of a model (for profiling): `cargo run --release --example all_meis [MODEL [REPEATS]]`.
fn main() -> retina::Result<()> {
    retina::allocator::tune_for_repeated_buffers();
    let spec = std::env::args().nth(1).unwrap_or_else(|| "demo".into());
    let repeats: usize = std::env::args().nth(2).and_then(|r| r.parse().ok()).unwrap_or(1);
    let model: retina::model::Model<f32> = retina::model::Model::from_raw(&retina::formats::read_model(&spec, -1, &Default::default())?)?;
    let settings = retina::mei::MeiSettings::openretina(model.config.input_channels);
    let targets = retina::mei::all_targets(&model);
    for _ in 0..repeats {
        let start = std::time::Instant::now();
        let meis = retina::mei::optimize_all(&model, &targets, &settings, &|| {})?;
        println!("{} MEIs in {:.3} s", meis.len(), start.elapsed().as_secs_f64());
    }
    Ok(())
}
