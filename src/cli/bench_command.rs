//! `retina bench`: timing a model on this machine.

use super::*;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The model to measure.
    #[arg(long, value_name = "NAME_OR_PATH", default_value = "demo")]
    pub model_path: String,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Frames per stimulus.
    #[arg(long = "time-steps-stimulus", default_value_t = 50, value_name = "N", value_parser = frames())]
    pub time_steps: usize,
    /// Instead: time per output-neuron MEI on the model's core with its first session's readout tiled
    /// to each of these neuron counts (e.g. `28,1000,3000`).
    #[arg(long, value_delimiter = ',', value_name = "N,N,...", value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_TILED_NEURONS))]
    pub neurons: Option<Vec<usize>>,
    /// With --neurons: also run `retina visualize --no-video --dpi 30` of the largest tiled model into
    /// DIR and print its report line (wall time and peak memory).
    #[arg(long, value_name = "DIR", requires = "neurons")]
    pub visualize: Option<PathBuf>,
    /// openretina's seconds for one MEI of this model on this machine, to print ratios against
    /// (default: the `timing` of a fixture's manifest.json next to the model file, or openretina's
    /// measured numbers for `demo`; otherwise no ratios are printed).
    #[arg(long, value_name = "SECONDS", value_parser = positive_number)]
    pub openretina_mei_seconds: Option<f64>,
    /// For large models: time batch 1 only and, instead of all MEIs, output neuron 0's MEI of the first
    /// session (the one openretina's fixture timings use), one copy per thread, median of 3.
    #[arg(long, conflicts_with = "neurons")]
    pub one_mei: bool,
}

pub(super) fn bench_command(args: &BenchArgs) -> Result<()> {
    let Some(sizes) = &args.neurons else {
        let model = load_model(&args.model_path, &args.source)?;
        // Batches of 32 stimuli are timed (of 1 with --one-mei).
        model.check_work(args.time_steps, if args.one_mei { 1 } else { 32 }, Work::Forward)?;
        let openretina = crate::bench::openretina_reference(&args.model_path, args.openretina_mei_seconds)?;
        for line in crate::bench::run(&model, args.time_steps, openretina.as_ref(), args.one_mei)?.lines {
            println!("{line}");
        }
        return Ok(());
    };
    let mut file = formats::open_model(&args.model_path, one_member(args.source.model_id)?, &args.source.download_options(false))?;
    // Refuse a file retina could not run before reading tensors the model would not take.
    Model::<f32>::from_file(&mut file).map_err(|e| Error::new(format!("{}: {e}", formats::describe_source(&args.model_path))))?;
    let raw = file.into_raw()?;
    for line in crate::bench::per_mei_by_neurons(&raw, sizes, args.time_steps)?.lines {
        println!("{line}");
    }
    if let Some(folder) = &args.visualize {
        let n = sizes.iter().copied().max().unwrap_or(1);
        let model_file = std::env::temp_dir().join(format!("retina-bench-{}-{n}.safetensors", std::process::id()));
        write_atomic(&model_file, &formats::safetensors::serialize_model(&crate::bench::tiled_model(&raw, n)?)?)?;
        let exe = std::env::current_exe().map_err(|e| Error::new(format!("cannot find the retina binary ({e})")))?;
        let out = std::process::Command::new(exe)
            .arg("visualize")
            .arg("--model-path")
            .arg(&model_file)
            .arg("--save-folder")
            .arg(folder)
            .args(["--no-video", "--dpi", "30"])
            .stderr(std::process::Stdio::inherit())
            .output();
        let _ = std::fs::remove_file(&model_file);
        let out = out.map_err(|e| Error::new(format!("cannot run retina visualize ({e})")))?;
        if !out.status.success() {
            bail!("retina visualize of the model tiled to {n} neurons failed");
        }
        let report = String::from_utf8_lossy(&out.stdout);
        println!("visualize, N = {n} (--no-video --dpi 30): {}", report.lines().last().unwrap_or("").trim());
    }
    Ok(())
}
