//! Figures: the numbers of the MEI figure against what openretina 1.1.1 computed (fixtures), and the
//! files in every format (decodable, right size, not blank, colours where they belong).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use retina::formats::safetensors::{parse, read_file};
use retina::formats::RawTensor;
use retina::plot::bench::{sample_conv_weights, sample_mei_input, sample_readout_neuron};
use retina::plot::composition::Butterworth;
use retina::plot::{
    draw_conv_weights, draw_mei, draw_readout_neuron, mei_composition, ConvWeightLimits, ConvWeights, FigureStyle,
    ImageFormat, ReadoutLimits,
};
use retina::Tensor;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");

fn reference(model: &str) -> BTreeMap<String, RawTensor> {
    let path = PathBuf::from(FIXTURES).join(model).join("reference.safetensors");
    assert!(path.exists(), "fixture missing: looked for {} (FIXTURES = {FIXTURES})", path.display());
    let bytes = read_file(&path).unwrap();
    parse(&bytes, &path.display().to_string()).unwrap().0
}

fn f64_values(tensors: &BTreeMap<String, RawTensor>, name: &str) -> Tensor<f64> {
    let raw = tensors.get(name).unwrap_or_else(|| panic!("reference has no tensor {name}"));
    raw.to_float::<f64>(name).unwrap()
}

/// max |actual - expected| / max |expected| (absolute when the reference is all zero).
fn relative_max_diff(actual: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "length differs");
    let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = actual.iter().zip(expected).fold(0.0f64, |m, (a, e)| m.max((a - e).abs()));
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

/// openretina's `plot_stimulus_composition` numbers for every MEI of example_low_res, computed from
/// the float64 MEI. Both sides orient each singular vector pair so that the spatial centre block's
/// mean is positive, so they are compared as they are, without a sign flip.
#[test]
fn mei_composition_matches_openretina_for_every_mei() {
    let tensors = reference("example_low_res");
    let meis: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".f64"))
        .filter(|k| k.starts_with("mei."))
        .map(String::from)
        .collect();
    assert_eq!(meis.len(), 41, "example_low_res lists 41 MEIs");
    let mut worst = (0.0f64, String::new());
    for mei in &meis {
        let stimulus = f64_values(&tensors, &format!("{mei}.f64"));
        let stimulus = Tensor { shape: stimulus.shape[1..].to_vec(), data: stimulus.data };
        let compositions = mei_composition(&stimulus, 30.0).unwrap();
        assert_eq!(compositions.len(), stimulus.shape[0]);
        for (k, c) in compositions.iter().enumerate() {
            let name = |part: &str| format!("{mei}.composition.c{k}.{part}");
            let checks = [
                ("temporal", c.temporal.clone()),
                ("spatial", c.spatial.data.clone()),
                ("fft_freqs", c.fft_freqs.clone()),
                ("fft_weights", c.fft_weights.clone()),
                ("main_freq", vec![c.main_frequency]),
            ];
            for (part, actual) in checks {
                let expected = f64_values(&tensors, &name(part));
                let diff = relative_max_diff(&actual, &expected.data);
                assert!(diff <= 1e-6, "{}: relative max difference {diff:e} > 1e-6", name(part));
                if diff > worst.0 {
                    worst = (diff, name(part));
                }
            }
            assert_eq!(c.spatial.shape, f64_values(&tensors, &name("spatial")).shape);
        }
    }
    eprintln!("composition: {} MEIs, worst relative difference {:e} ({})", meis.len(), worst.0, worst.1);
}

#[test]
fn butterworth_coefficients_match_scipy() {
    // scipy.signal.butter(5, Wn=10, fs=30, btype="low")
    let b = [
        0.1654233557243728,
        0.8271167786218641,
        1.6542335572437281,
        1.6542335572437281,
        0.8271167786218641,
        0.1654233557243728,
    ];
    let a = [1.0, 1.6448489114163642, 1.5866151829438249, 0.8048818947762373, 0.2299491201265278, 0.02725227391697612];
    let filter = Butterworth::lowpass(5, 10.0, 30.0).unwrap();
    let (fb, fa) = filter.coefficients();
    assert!(relative_max_diff(fb, &b) < 1e-13, "b = {fb:?}");
    assert!(relative_max_diff(fa, &a) < 1e-13, "a = {fa:?}");
    // A constant passes unchanged (unit DC gain, steady initial state).
    let flat = filter.filtfilt(&[2.5; 40]);
    assert!(flat.iter().all(|v| (v - 2.5).abs() < 1e-12), "{flat:?}");
    let err = Butterworth::lowpass(5, 10.0, 15.0).unwrap_err();
    assert!(err.message().contains("frame rate"), "{err}");
}

#[test]
fn image_format_parses_and_names_extensions() {
    for (text, format) in
        [("jpg", ImageFormat::Jpg), ("JPEG", ImageFormat::Jpg), ("png", ImageFormat::Png), (".svg", ImageFormat::Svg)]
    {
        assert_eq!(text.parse::<ImageFormat>().unwrap(), format);
    }
    assert_eq!(ImageFormat::Jpg.extension(), "jpg");
    assert_eq!(ImageFormat::Png.extension(), "png");
    assert_eq!(ImageFormat::Svg.extension(), "svg");
    let err = "gif".parse::<ImageFormat>().unwrap_err();
    assert!(err.message().contains("gif") && !err.message().contains('\n'));
}

#[test]
fn limits_cover_the_whole_layer_and_session() {
    let mut a = sample_conv_weights();
    let mut b = a.clone();
    a.temporal[3] = -4.0;
    b.sin[2] = 3.0;
    b.spatial.data[0] = -0.9;
    let limits = ConvWeightLimits::of_layer(&[a, b]);
    assert_eq!(limits.temporal, 4.0);
    assert!((limits.sin_cos - 3.3).abs() < 1e-6);
    assert_eq!(limits.spatial, 0.9);

    let mut n0 = sample_readout_neuron();
    let mut n1 = n0.clone();
    n0.feature_weights[0] = -0.5;
    n1.feature_weights[1] = 0.75;
    n1.mask.data[5] = -2.0;
    let limits = ReadoutLimits::of_session(&[n0, n1]);
    assert_eq!((limits.feature_min, limits.feature_max, limits.mask), (-0.5, 0.75, 2.0));
}

#[test]
fn conv_weights_follow_openretinas_sign_rule() {
    let w = sample_conv_weights();
    assert_eq!(w.centre_positive().unwrap(), w, "a positive centre stays as it is");
    let negated = negate(&w);
    let oriented = negated.centre_positive().unwrap();
    assert_eq!(oriented, w, "a negative centre flips all four: spatial, temporal, sin and cos");
}

fn negate(w: &ConvWeights) -> ConvWeights {
    let flip = |v: &[f32]| v.iter().map(|x| -x).collect::<Vec<f32>>();
    ConvWeights {
        spatial: Tensor { shape: w.spatial.shape.clone(), data: flip(&w.spatial.data) },
        temporal: flip(&w.temporal),
        sin: flip(&w.sin),
        cos: flip(&w.cos),
        ..w.clone()
    }
}

/// All three figures in one format at `dpi`, written into `dir`; returns (name, path, inches).
fn draw_all(dir: &Path, format: ImageFormat, dpi: u32) -> Vec<(&'static str, PathBuf, (f64, f64))> {
    let style = FigureStyle { format, dpi };
    let ext = format.extension();
    let conv = negate(&sample_conv_weights()); // negative centre: the figure must still show it red
    let conv_limits = ConvWeightLimits::of_layer(std::slice::from_ref(&conv));
    let neuron = sample_readout_neuron();
    let readout_limits = ReadoutLimits::of_session(std::slice::from_ref(&neuron));
    let figures = vec![
        ("mei", dir.join(format!("mei.{ext}")), (21.0, 12.0)),
        ("conv", dir.join(format!("conv.{ext}")), (18.0, 6.0)),
        ("readout", dir.join(format!("readout.{ext}")), (12.0, 6.0)),
    ];
    // Drawn in parallel, as the CLI does.
    figures
        .par_iter()
        .try_for_each(|(name, path, _)| match *name {
            "mei" => draw_mei(&sample_mei_input(), &style, path),
            "conv" => draw_conv_weights(&conv, &conv_limits, &style, path),
            _ => draw_readout_neuron(&neuron, &readout_limits, &style, path),
        })
        .unwrap();
    figures
}

fn close(p: &image::Rgb<u8>, colour: [u8; 3], tolerance: i32) -> bool {
    p.0.iter().zip(colour).all(|(&a, b)| (a as i32 - b as i32).abs() <= tolerance)
}

/// RdBu_r's extremes, as matplotlib's 256-entry table holds them.
const DARKEST_RED: [u8; 3] = [103, 0, 31];
const DARKEST_BLUE: [u8; 3] = [5, 48, 97];

#[test]
fn raster_figures_decode_with_the_right_size_and_colours() {
    let dir = tempfile::tempdir().unwrap();
    for format in [ImageFormat::Jpg, ImageFormat::Png] {
        let dpi = 60;
        for (name, path, (w_in, h_in)) in draw_all(dir.path(), format, dpi) {
            let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
            let expected = ((w_in * dpi as f64).round() as u32, (h_in * dpi as f64).round() as u32);
            assert_eq!(img.dimensions(), expected, "{name} {format:?}");
            let tolerance = if format == ImageFormat::Png { 0 } else { 24 };
            let white = img.pixels().filter(|p| close(p, [255, 255, 255], tolerance)).count();
            let total = (img.width() * img.height()) as usize;
            assert!(
                white < total * 97 / 100 && white > total / 4,
                "{name} {format:?}: {white} of {total} pixels white"
            );
            let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 60)).count();
            assert!(dark > 500, "{name} {format:?}: only {dark} dark pixels (text, frames, lines)");

            // Where the heat map's largest positive value is drawn, RdBu_r's darkest red appears.
            let (third, half) = (img.width() / 3, img.width() / 2);
            let count = |colour, x_end: u32| {
                img.enumerate_pixels().filter(|(x, _, p)| *x < x_end && close(p, colour, tolerance.max(6))).count()
            };
            match name {
                // The conv sample's centre is negative in the model; shown flipped, so red dominates
                // the spatial panel (the colour bar holds as much of each extreme).
                "conv" => assert!(count(DARKEST_RED, third) > count(DARKEST_BLUE, third) + 100, "conv {format:?}"),
                // The Gaussian mask peaks inside; its limit is its own maximum, so the peak cell is
                // darkest red and no cell is blue.
                "readout" => {
                    assert!(count(DARKEST_RED, half) > 100, "readout {format:?}");
                    assert_eq!(count(DARKEST_BLUE, half), 0, "readout {format:?}");
                }
                // Spatial components are scaled to max |1| with a positive centre: darkest red shows.
                _ => assert!(count(DARKEST_RED, half) > 50, "mei {format:?}"),
            }
        }
    }
}

#[test]
fn readout_mask_peak_is_red_where_the_mask_peaks() {
    let dir = tempfile::tempdir().unwrap();
    let neuron = sample_readout_neuron();
    let limits = ReadoutLimits::of_session(std::slice::from_ref(&neuron));
    let path = dir.path().join("n.png");
    draw_readout_neuron(&neuron, &limits, &FigureStyle { format: ImageFormat::Png, dpi: 50 }, &path).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    // The sample mask (8 x 6) peaks at row 2, column 3: its red cell lies in the upper half of the
    // mask, right of the mask's centre column.
    let red: Vec<(u32, u32)> =
        img.enumerate_pixels().filter(|(_, _, p)| close(p, DARKEST_RED, 0)).map(|(x, y, _)| (x, y)).collect();
    assert!(!red.is_empty());
    let (cx, cy) = (
        red.iter().map(|p| p.0 as f64).sum::<f64>() / red.len() as f64,
        red.iter().map(|p| p.1 as f64).sum::<f64>() / red.len() as f64,
    );
    assert!(cx < img.width() as f64 / 2.0 && cy < img.height() as f64 / 2.0, "red centre at ({cx}, {cy})");
    assert!(close(img.get_pixel(cx as u32, cy as u32), DARKEST_RED, 0));
}

#[test]
fn svg_figures_are_xml_with_size_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let dpi = 300;
    for (name, path, (w_in, h_in)) in draw_all(dir.path(), ImageFormat::Svg, dpi) {
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("<svg ") && svg.trim_end().ends_with("</svg>"), "{name}");
        let size = format!("width=\"{}\" height=\"{}\"", (w_in * dpi as f64) as u32, (h_in * dpi as f64) as u32);
        assert!(svg.contains(&size), "{name}: no {size}");
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count(), "{name}");
        let expected_text = match name {
            "mei" => "Weighted Frequency:",
            "conv" => "Weights for in_channel=1 out_channel=0",
            _ => "Readout Feature Weights",
        };
        assert!(svg.contains(expected_text), "{name}: no text {expected_text}");
        assert!(svg.contains("<rect") && svg.contains("fill=\"#67001f\""), "{name}: no darkest red cell");
    }
}

#[test]
fn bad_inputs_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let style = FigureStyle::default();
    let mut mei = sample_mei_input();
    mei.window = (45, 60);
    let err = draw_mei(&mei, &style, &dir.path().join("a.jpg")).unwrap_err();
    assert!(err.message().contains("window"), "{err}");

    let mut mei = sample_mei_input();
    mei.stimulus.shape = vec![2, 50, 288];
    let err = draw_mei(&mei, &style, &dir.path().join("b.jpg")).unwrap_err();
    assert!(err.message().contains("(C, T, H, W)"), "{err}");

    let missing = dir.path().join("no/such/folder/c.jpg");
    let err = draw_mei(&sample_mei_input(), &style, &missing).unwrap_err();
    assert!(err.message().contains("no/such/folder"), "{err}");

    let err = draw_mei(
        &sample_mei_input(),
        &FigureStyle { format: ImageFormat::Jpg, dpi: 100_000 },
        &dir.path().join("d.jpg"),
    )
    .unwrap_err();
    assert!(err.message().contains("dpi"), "{err}");

    let mut w = sample_conv_weights();
    w.spatial.shape = vec![3, 3];
    let err = draw_conv_weights(&w, &ConvWeightLimits::of_layer(&[]), &style, &dir.path().join("e.jpg")).unwrap_err();
    assert!(err.message().contains("in_channel=1 out_channel=0"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "no file should be left behind, found {left:?}");
}

#[test]
fn jpeg_matches_png_closely() {
    let dir = tempfile::tempdir().unwrap();
    let neuron = sample_readout_neuron();
    let limits = ReadoutLimits::of_session(std::slice::from_ref(&neuron));
    let mut images = Vec::new();
    for format in [ImageFormat::Png, ImageFormat::Jpg] {
        let path = dir.path().join(format!("n.{}", format.extension()));
        draw_readout_neuron(&neuron, &limits, &FigureStyle { format, dpi: 77 }, &path).unwrap();
        images.push(image::open(&path).unwrap().to_rgb8());
    }
    let (png, jpg) = (&images[0], &images[1]);
    assert_eq!(png.dimensions(), jpg.dimensions());
    let diffs: Vec<i32> = png.as_raw().iter().zip(jpg.as_raw()).map(|(&a, &b)| (a as i32 - b as i32).abs()).collect();
    let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
    assert!(mean < 1.0, "mean |png - jpg| = {mean}");
    // Flat areas come out exactly (DC-only blocks): the corner pixel is pure white.
    assert_eq!(jpg.get_pixel(0, 0).0, [255, 255, 255]);
}

#[test]
fn mei_figures_for_one_three_and_tiny_channels() {
    let dir = tempfile::tempdir().unwrap();
    for (c, t, h, w) in [(1, 50, 18, 16), (3, 12, 4, 5), (2, 30, 72, 64)] {
        let data = (0..c * t * h * w).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        let input = retina::plot::MeiFigureInput {
            stimulus: Tensor::new(vec![c, t, h, w], data).unwrap(),
            response: Some(vec![0.5; 3]),
            window: (t - 5, t),
            frame_rate: 30.0,
        };
        let compositions = mei_composition(&input.stimulus, 30.0).unwrap();
        assert_eq!(compositions.len(), c);
        assert!(compositions.iter().all(|k| k.fft_freqs.len() == t / 2 && k.main_frequency.is_finite()));
        let path = dir.path().join(format!("mei_{c}.png"));
        draw_mei(&input, &FigureStyle { format: ImageFormat::Png, dpi: 30 }, &path).unwrap();
        assert_eq!(image::open(&path).unwrap().to_rgb8().dimensions(), (630, 360));
    }
}

#[test]
fn flat_and_broken_stimuli_draw_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    for (name, value) in [("zero", 0.0f32), ("nan", f32::NAN)] {
        let mut input = sample_mei_input();
        input.stimulus.data.iter_mut().for_each(|v| *v = value);
        input.response = Some(vec![value; 30]);
        let path = dir.path().join(format!("{name}.jpg"));
        draw_mei(&input, &FigureStyle::default(), &path).unwrap();
        assert!(image::open(&path).is_ok(), "{name}");
    }
    let zero = mei_composition(&Tensor::<f32>::zeros(vec![2, 20, 6, 6]), 30.0).unwrap();
    assert!(zero.iter().all(|c| c.temporal.iter().all(|&v| v == 0.0) && c.main_frequency == 0.0));
}

/// The examples that write files write where their arguments say, or without one into a fresh folder
/// they name on stdout, never into the folder they are run from. They are built by `cargo test` (all
/// targets), next to this test's `deps/` folder.
#[test]
fn examples_write_where_they_say_never_into_the_current_folder() {
    let exe = std::env::current_exe().unwrap();
    let examples = exe.parent().and_then(Path::parent).unwrap().join("examples");
    for (example, written) in [("plot_weights", &["weights_layer0_in1_out0.png", "readout_"][..]), ("mei", &["mei.safetensors"][..])] {
        let bin = examples.join(example);
        assert!(bin.is_file(), "{} is missing: build the examples (`cargo test --release` or `cargo build --release --examples`)", bin.display());
        let cwd = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(&bin)
            .current_dir(cwd.path())
            .env("OPENRETINA_CACHE_DIRECTORY", std::env::temp_dir().join("retina-examples-test-empty-cache"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{example}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "{example} wrote into the current folder");
        // Every file it wrote is named on stdout, outside the current folder.
        let paths: Vec<PathBuf> = written
            .iter()
            .map(|name| {
                let line = stdout.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{example} does not name {name}: {stdout}"));
                PathBuf::from(line.rsplit(' ').next().unwrap())
            })
            .collect();
        for path in &paths {
            assert!(path.is_file() && !path.starts_with(cwd.path()), "{example}: {}", path.display());
        }
        let _ = std::fs::remove_dir_all(paths[0].parent().unwrap());
    }
}

/// Kernels without sine/cosine weights get two panels (12 x 6 inches): a one-frame kernel
/// (`time_independent`) openretina's own figure, spatial weight in the pair's own colour range and an
/// empty "No temporal filter" panel; a free temporal kernel (`full`, `separable`, which openretina
/// cannot draw) spatial weight and temporal kernel, without an empty sin/cos panel.
#[test]
fn conv_weight_figures_without_sin_cos_have_two_panels() {
    let dir = tempfile::tempdir().unwrap();
    let style = FigureStyle { format: ImageFormat::Png, dpi: 50 };
    let sample = sample_conv_weights();
    let one_frame = ConvWeights { temporal: vec![1.0], sin: Vec::new(), cos: Vec::new(), ..sample.clone() };
    let space_time = ConvWeights { sin: Vec::new(), cos: Vec::new(), ..sample.clone() };
    for (name, w) in [("one_frame", &one_frame), ("space_time", &space_time)] {
        // A layer limit 10x this pair's: the one-frame figure ignores it (its own range: darkest red
        // shows), the other uses it (pale colours only).
        let mut limits = ConvWeightLimits::of_layer(std::slice::from_ref(w));
        limits.spatial *= 10.0;
        let path = dir.path().join(format!("{name}.png"));
        draw_conv_weights(w, &limits, &style, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (600, 300), "{name}");
        let red = img.enumerate_pixels().filter(|(x, _, p)| *x < 240 && close(p, DARKEST_RED, 6)).count();
        let bar = 40; // the colour bar's own darkest red, about 6 x 12 pixels at 50 dpi
        if name == "one_frame" {
            assert!(red > bar + 30, "{name}: {red} darkest red pixels");
        } else {
            assert!(red < bar + 30, "{name}: {red} darkest red pixels");
        }
    }
}

/// A full convolution's figure (zoo_conv_full) shows two slices through the pair's largest |weight|:
/// the spatial kernel at that frame and the temporal kernel at that pixel, and its panel titles say
/// which (SVG text).
#[test]
fn full_conv_figures_slice_through_the_largest_weight_and_say_where() {
    let raw = retina::formats::checkpoint::read_model_file(&PathBuf::from(FIXTURES).join("zoo/zoo_conv_full/model.ckpt")).unwrap();
    let model: retina::model::Model<f32> = retina::model::Model::from_raw(&raw).unwrap();
    let w = retina::visualize::figures::conv_weights(&model, 0, 1, 0);
    let (note_s, note_t) = (w.spatial_note.clone().unwrap(), w.temporal_note.clone().unwrap());
    let frame: usize = note_s.strip_prefix("frame ").unwrap().split(' ').next().unwrap().parse().unwrap();
    let (row, col) = note_t.strip_prefix("at row ").unwrap().split_once(", column ").unwrap();
    let (row, col): (usize, usize) = (row.parse().unwrap(), col.parse().unwrap());
    let k = w.spatial.shape[1];
    let peak = w.spatial.data[row * k + col];
    assert_eq!(peak, w.temporal[frame], "the two slices cross at the peak");
    let largest = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert_eq!(peak.abs(), largest(&w.spatial.data).max(largest(&w.temporal)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.svg");
    let limits = ConvWeightLimits::of_layer(std::slice::from_ref(&w));
    draw_conv_weights(&w.centre_positive().unwrap(), &limits, &FigureStyle { format: ImageFormat::Svg, dpi: 72 }, &path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    for title in [format!("Spatial Weight ({note_s})"), format!("Temporal Weight ({note_t})")] {
        assert!(svg.contains(&title), "no title {title}");
    }
    assert!(!svg.contains("Sin/Cos"), "no empty sin/cos panel");
}
