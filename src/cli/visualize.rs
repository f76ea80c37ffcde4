//! `retina visualize`: its flags, several models in one call, and the report of failed MEIs.

use super::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  retina visualize --model-path demo --save-folder visualizations
  retina visualize --model-path hoefling_2024_base_low_res --save-folder visualizations
  retina visualize --is-hoefling-ensemble-model --model-id 0 --save-folder vis_ensemble_0
  retina visualize --model-path model.ckpt --save-folder out --layers 0 --no-video --image-file-format png
  retina visualize --model-path demo --save-folder mdis --objective decrease --optimizer adam --iterations 100 --early-stop 3,0.003")]
pub struct VisualizeArgs {
    /// The model: `demo` (built in), a .safetensors / Lightning .ckpt file, an ensemble folder, an
    /// http(s) URL or a pretrained model name (e.g. hoefling_2024_base_low_res).
    #[arg(long, value_name = "NAME_OR_PATH", required_unless_present_any = ["is_hoefling_ensemble_model", "merge"], conflicts_with = "is_hoefling_ensemble_model")]
    pub model_path: Option<String>,
    /// Use a member (`--model-id`) of the Hoefling 2024 ensemble, downloaded into the cache.
    #[arg(long)]
    pub is_hoefling_ensemble_model: bool,
    /// Folder for the outputs (created if missing), e.g. `visualizations`.
    #[arg(long, value_name = "DIR")]
    pub save_folder: PathBuf,
    /// Compute device. Only `cpu` exists in this build.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda")]
    pub device: String,
    /// Figure file format: jpg (openretina's default), png or svg.
    #[arg(long, default_value = "jpg", value_name = "jpg|png|svg")]
    pub image_file_format: String,
    /// Figure resolution in dots per inch (openretina draws at 300: a 6300 x 3600 MEI figure).
    #[arg(long, default_value_t = 150, value_name = "DPI", value_parser = dpi())]
    pub dpi: u32,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Maximise the responses (most exciting inputs) or minimise them (most depressing inputs).
    #[arg(long, value_enum, default_value = "increase")]
    pub objective: ObjectiveArg,
    /// For an ensemble folder or --is-hoefling-ensemble-model: output-neuron MEIs of the mean response
    /// of all members, each with centred readouts (Hoefling et al. 2024); inner channels and weights
    /// stay those of --model-id.
    #[arg(long)]
    pub ensemble_mean: bool,
    #[command(flatten)]
    pub optimization: OptimizationArgs,
    /// Only these core layers' channel MEIs, as indices or names, comma-separated (e.g. `0,1`).
    #[arg(long, value_delimiter = ',', value_name = "LAYERS")]
    pub layers: Option<Vec<String>>,
    /// Only these sessions' neuron MEIs, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "SESSIONS")]
    pub sessions: Option<Vec<String>>,
    /// Only these neuron indices in each session, comma-separated (e.g. `0,5,10`).
    #[arg(long, value_delimiter = ',', value_name = "NEURONS")]
    pub neurons: Option<Vec<usize>>,
    /// Do not write MEI videos.
    #[arg(long)]
    pub no_video: bool,
    /// Do not draw the conv and readout weight figures.
    #[arg(long)]
    pub no_weights: bool,
    /// Do not compute MEIs (weight figures only).
    #[arg(long)]
    pub no_meis: bool,
    /// MEIs optimised together per chunk (all cores work on a chunk); bounds memory.
    #[arg(long, default_value_t = 256, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_BATCH))]
    pub batch_size: usize,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_THREADS))]
    pub threads: Option<usize>,
    /// Redo every output, even those a previous identical run finished.
    #[arg(long, conflicts_with = "shard")]
    pub overwrite: bool,
    /// Do only shard K of N (0 <= K < N) of the work; N processes (e.g. a SLURM job array:
    /// `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`) share one save folder, and the last to
    /// finish writes meis.safetensors, summary.csv and index.html.
    #[arg(long, value_name = "K/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// Only write meis.safetensors, summary.csv and index.html of a folder whose shards are all done.
    #[arg(long, conflicts_with_all = ["model_path", "is_hoefling_ensemble_model", "shard"])]
    pub merge: bool,
    /// Print only errors.
    #[arg(short, long)]
    pub quiet: bool,
}

fn parse_shard(text: &str) -> std::result::Result<Shard, String> {
    Shard::parse(text).map_err(|e| e.to_string())
}

pub(super) fn visualize_command(args: &VisualizeArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let mut failures = FailedMeis::default();
    if args.merge {
        for merged in crate::visualize::merge_folders(&args.save_folder)? {
            if !args.quiet {
                println!("{}: merged {} MEIs into meis.safetensors, summary.csv and index.html", merged.folder.display(), merged.meis);
            }
            failures.add(&merged.folder, merged.meis, &merged.failed);
        }
        return failures.result();
    }
    if args.device != "cpu" {
        bail!("--device {}: not available in this build; retina runs on the CPU (use --device cpu)", args.device);
    }
    let style = crate::plot::FigureStyle { format: args.image_file_format.parse()?, dpi: args.dpi };
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| Error::new(format!("--threads: cannot start the worker threads ({e})")))?;
    }
    let download = args.source.download_options(args.quiet);
    // The models: one, or a comma-separated list; each ensemble folder's members with --model-id all.
    let specs: Vec<Option<String>> = match &args.model_path {
        Some(list) => list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Some(s.to_string())).collect(),
        None => vec![None],
    };
    if specs.is_empty() {
        bail!("--model-path is empty; name a model, or several separated by commas");
    }
    let mut jobs: Vec<(Option<String>, i64, Option<i64>)> = Vec::new();
    for spec in specs {
        if args.source.model_id != ALL_MEMBERS {
            jobs.push((spec, args.source.model_id, None));
            continue;
        }
        let folder = match &spec {
            None => formats::download::fetch_hoefling_ensemble(&download)?,
            Some(s) => match formats::download::resolve_model(s, &download)? {
                formats::download::ModelLocation::Local { path, .. } if path.is_dir() => path,
                _ => bail!("--model-id all: {s} is not an ensemble folder; it holds one model, so leave --model-id out"),
            },
        };
        let members = formats::checkpoint::ensemble_member_ids(&folder)?.len() as i64;
        jobs.extend((0..members).map(|id| (spec.clone(), id, Some(id))));
    }
    if jobs.len() == 1 {
        let (spec, id, _) = &jobs[0];
        visualize_model(args, spec.as_deref(), *id, &args.save_folder, style, start, &mut failures)?;
        return failures.result();
    }
    let names = crate::visualize::models::folder_names(
        &jobs.iter().map(|(spec, _, member)| (spec.clone().unwrap_or_else(|| "hoefling_2024_ensemble".into()), *member)).collect::<Vec<_>>(),
    );
    crate::visualize::models::check_models_index(&args.save_folder, args.overwrite)?;
    let mut listed = Vec::new();
    for ((spec, id, _), name) in jobs.iter().zip(names) {
        let what = visualize_model(args, spec.as_deref(), *id, &args.save_folder.join(&name), style, start, &mut failures)?;
        listed.push((name, what));
    }
    crate::visualize::models::write_models_index(&args.save_folder, &listed)?;
    failures.result()
}

/// The MEIs that failed over a visualize command's folders. Every other output is written; the
/// command then ends with one line counting them, and exit code 2.
#[derive(Default)]
struct FailedMeis {
    failed: usize,
    meis: usize,
    first: Option<String>,
    folders: Vec<std::path::PathBuf>,
}

impl FailedMeis {
    fn add(&mut self, folder: &std::path::Path, meis: usize, failed: &std::collections::BTreeMap<usize, String>) {
        self.meis += meis;
        self.failed += failed.len();
        if let Some(error) = failed.values().next() {
            self.first.get_or_insert_with(|| error.clone());
            self.folders.push(folder.to_path_buf());
        }
    }

    fn result(self) -> Result<()> {
        let Some(first) = self.first else { return Ok(()) };
        let folders: Vec<String> = self.folders.iter().map(|f| f.display().to_string()).collect();
        Err(Error::new(format!(
            "{} of {} MEIs failed (the first: {first}); every other output is written, and summary.csv and index.html in {} mark the failed ones",
            self.failed,
            self.meis,
            folders.join(", ")
        )))
    }
}

/// Visualize one model into `save_folder`; returns a one-line description of it for the models page.
fn visualize_model(
    args: &VisualizeArgs,
    spec: Option<&str>,
    model_id: i64,
    save_folder: &std::path::Path,
    style: crate::plot::FigureStyle,
    start: std::time::Instant,
    failures: &mut FailedMeis,
) -> Result<String> {
    let download = args.source.download_options(args.quiet);
    let loading = if args.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new_spinner() };
    loading.set_message("loading the model");
    loading.enable_steady_tick(std::time::Duration::from_millis(120));
    let source = spec.map(formats::describe_source).unwrap_or_else(|| "Hoefling 2024 ensemble".into());
    let loaded = (|| -> Result<(Model<f32>, Vec<Model<f32>>)> {
        let (mut file, folder) = match spec {
            Some(spec) => {
                let file = formats::open_model(spec, model_id, &download)?;
                let folder = match args.ensemble_mean.then(|| formats::download::resolve_model(spec, &download)).transpose()? {
                    Some(formats::download::ModelLocation::Local { path, .. }) if path.is_dir() => Some(path),
                    _ => None,
                };
                (file, folder)
            }
            None => {
                let folder = formats::download::fetch_hoefling_ensemble(&download)?;
                (formats::checkpoint::open_model(&folder, model_id)?, Some(folder))
            }
        };
        let model = Model::from_file(&mut file).map_err(|e| Error::new(format!("{source}: {e}")))?;
        let members = match (args.ensemble_mean, folder) {
            (false, _) => Vec::new(),
            (true, Some(folder)) => load_centred_members(&folder)?,
            (true, None) => bail!("--ensemble-mean needs an ensemble folder or --is-hoefling-ensemble-model; {source} is a single model"),
        };
        Ok((model, members))
    })();
    // Cleared before any error is printed, so the error stays one line.
    loading.finish_and_clear();
    let (model, members) = loaded?;
    // Hoefling ensemble members: output-neuron MEIs on readouts centred at (0, 0), everything else
    // on the member as stored, and openretina's ensemble folder layout.
    let ensemble = matches!(model.config.architecture, crate::model::config::Architecture::HoeflingEnsembleMember { .. });
    let centred = ensemble.then(|| {
        let mut m = model.clone();
        m.center_readouts();
        m
    });
    let layers = args
        .layers
        .as_ref()
        .map(|ls| ls.iter().map(|l| model.layer_index(l)).collect::<Result<Vec<_>>>())
        .transpose()?;
    // Before the save folder is made: refuses too few frames and MEIs beyond the memory budget.
    model.check_stimulus(&model.config.stimulus_shape(args.optimization.time_steps, 1))?;
    let options = crate::visualize::VisualizeOptions {
        save_folder: save_folder.to_path_buf(),
        style,
        mei: MeiSettings { direction: args.objective.direction(), ..args.optimization.settings(model.config.input_channels)? },
        layers,
        sessions: args.sessions.clone(),
        neurons: args.neurons.clone(),
        meis: !args.no_meis,
        videos: !args.no_video,
        weights: !args.no_weights,
        batch_size: args.batch_size,
        overwrite: args.overwrite,
        quiet: args.quiet,
        ensemble_layout: ensemble,
        output_note: (!members.is_empty()).then(|| format!("mean of {} centred ensemble members", members.len())),
        shard: args.shard.unwrap_or(Shard::ALL),
    };
    let output_models = match &centred {
        _ if !members.is_empty() => &members[..],
        Some(centred) => std::slice::from_ref(centred),
        None => std::slice::from_ref(&model),
    };
    let report = crate::visualize::visualize(&model, output_models, &options)?;
    if !args.quiet {
        if report.missing > 0 {
            println!(
                "{}: this shard is done; {} pieces of work of other shards are missing, and the last shard to finish (or `retina visualize --merge --save-folder {}`) writes meis.safetensors, summary.csv and index.html",
                save_folder.display(),
                report.missing,
                save_folder.display()
            );
        }
        println!(
            "{}: {} MEIs ({} optimised, {} from the previous run), {} files written, {} kept, in {:.1} s{}",
            save_folder.display(),
            report.meis_optimised + report.meis_reused,
            report.meis_optimised,
            report.meis_reused,
            report.files_written,
            report.files_kept,
            start.elapsed().as_secs_f64(),
            crate::bench::peak_rss_bytes().map(|b| format!(", peak memory {} MB", b >> 20)).unwrap_or_default()
        );
    }
    failures.add(save_folder, report.meis, &report.failed);
    let neurons: usize = model.readouts.values().map(|r| r.neurons()).sum();
    let member = if ensemble { format!(" member {model_id}") } else { String::new() };
    let c = &model.config;
    Ok(format!("{source}{member}: {}, {} core layers, {} sessions, {neurons} neurons", c.model_class, model.core.n_layers(), model.readouts.len()))
}
