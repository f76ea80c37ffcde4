//! MEI videos: written files are read back with an independent MP4 reader (the `mp4` crate) and
//! their frames decoded with OpenH264's decoder, so neither ffmpeg nor a browser is needed here.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::time::Duration;

use openh264::decoder::Decoder;
use openh264::formats::YUVSource;
use retina::plot::video::{write_mei_video, VideoOptions};
use retina::Tensor;

const T: usize = 50;
const H: usize = 18;
const W: usize = 16;

/// A stimulus (channels, T, H, W) of value -1 with a bright (+1) vertical bar that moves one
/// column per frame; channel `c` has its bar `c` columns further right.
fn moving_bar(channels: usize) -> Tensor<f32> {
    let mut stimulus = Tensor::<f32>::zeros(vec![channels, T, H, W]);
    for c in 0..channels {
        for t in 0..T {
            for y in 0..H {
                for x in 0..W {
                    let bar = (t + c) % W == x;
                    stimulus.data[((c * T + t) * H + y) * W + x] = if bar { 1.0 } else { -1.0 };
                }
            }
        }
    }
    stimulus
}

/// A stimulus of one time step where every stimulus pixel of channel `c` has `value(c, y, x)`.
fn still(channels: usize, value: impl Fn(usize, usize, usize) -> f32) -> Tensor<f32> {
    let data = (0..channels).flat_map(|c| (0..H * W).map(move |i| (c, i / W, i % W))).map(|(c, y, x)| value(c, y, x));
    Tensor::new(vec![channels, 1, H, W], data.collect()).unwrap()
}

struct Video {
    codec: String,
    width: u16,
    height: u16,
    frames: u32,
    duration: Duration,
    frame_rate: f64,
    /// Each decoded frame as RGB bytes, row by row.
    rgb_frames: Vec<Vec<u8>>,
}

fn read_video(path: &Path) -> Video {
    let size = std::fs::metadata(path).unwrap().len();
    let mut reader = mp4::Mp4Reader::read_header(BufReader::new(File::open(path).unwrap()), size).unwrap();
    assert_eq!(reader.tracks().len(), 1, "one video track");
    let (&id, track) = reader.tracks().iter().next().unwrap();
    let (width, height) = (track.width(), track.height());
    let mut video = Video {
        codec: track.box_type().unwrap().to_string(),
        width,
        height,
        frames: track.sample_count(),
        duration: track.duration(),
        frame_rate: track.frame_rate(),
        rgb_frames: Vec::new(),
    };
    // MP4 samples hold length-prefixed NAL units; the decoder takes them with start codes.
    let start_code = |nal: &[u8]| [&[0, 0, 0, 1], nal].concat();
    let mut decoder = Decoder::new().unwrap();
    let parameter_sets =
        [start_code(track.sequence_parameter_set().unwrap()), start_code(track.picture_parameter_set().unwrap())]
            .concat();
    decoder.decode(&parameter_sets).unwrap();
    for sample_id in 1..=video.frames {
        let sample = reader.read_sample(id, sample_id).unwrap().expect("sample present");
        let mut annex_b = Vec::new();
        let mut rest: &[u8] = &sample.bytes;
        while rest.len() >= 4 {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            annex_b.extend(start_code(&rest[4..4 + len]));
            rest = &rest[4 + len..];
        }
        assert!(rest.is_empty(), "sample {sample_id} ends inside a NAL unit");
        let picture = decoder.decode(&annex_b).unwrap().expect("one picture per sample");
        assert_eq!(picture.dimensions(), (width as usize, height as usize));
        let mut rgb = vec![0; width as usize * height as usize * 3];
        picture.write_rgb8(&mut rgb);
        video.rgb_frames.push(rgb);
    }
    video
}

/// The RGB colour at the centre of stimulus pixel (y, x) of a decoded frame.
fn colour_at(video: &Video, frame: usize, y: usize, x: usize) -> [u8; 3] {
    let scale = video.width as usize / W;
    let (py, px) = (y * scale + scale / 2, x * scale + scale / 2);
    let i = (py * video.width as usize + px) * 3;
    video.rgb_frames[frame][i..i + 3].try_into().unwrap()
}

#[track_caller]
fn assert_colour(actual: [u8; 3], expected: [u8; 3]) {
    // Lossy coding and the YUV round trip move colours by a few levels.
    let close = actual.iter().zip(expected).all(|(&a, e)| (a as i32 - e as i32).abs() <= 12);
    assert!(close, "colour {actual:?}, expected about {expected:?}");
}

#[test]
fn writes_playable_h264_mp4_for_1_2_and_3_channels() {
    let dir = tempfile::tempdir().unwrap();
    for channels in 1..=3 {
        let path = dir.path().join(format!("mei_{channels}.mp4"));
        write_mei_video(&moving_bar(channels), &path, &VideoOptions::default()).unwrap();
        let video = read_video(&path);
        assert_eq!(video.codec, "avc1");
        // 18 × 16 scaled by 16: short side 256, both sides even.
        assert_eq!((video.width, video.height), (256, 288));
        assert_eq!(video.frames, T as u32);
        assert_eq!(video.rgb_frames.len(), T);
        assert_eq!(video.duration, Duration::from_secs(10), "50 frames at 5 per second");
        assert!((video.frame_rate - 5.0).abs() < 1e-9, "frame rate {}", video.frame_rate);

        // The bar of the first channel moves one column per frame.
        for t in [0, 1, 17, 49] {
            let on = t % W;
            let off = (on + W / 2) % W;
            let bright = colour_at(&video, t, H / 2, on);
            let dark = colour_at(&video, t, H / 2, off);
            let first_channel = match channels {
                1 => 1,
                2 => 1, // green
                _ => 0, // red
            };
            assert!(bright[first_channel] > 240, "frame {t}: bar {bright:?}");
            assert!(dark[first_channel] < 15, "frame {t}: background {dark:?}");
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 400_000, "{channels} channels: {size} bytes");
    }
}

#[test]
fn colours_follow_openretina_display() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("colours.mp4");
    // Left half: first channel on; right half: second channel on; third channel on in the top rows.
    let value = |c: usize, y: usize, x: usize| match c {
        0 => (x < W / 2) as u8 as f32,
        1 => (x >= W / 2) as u8 as f32,
        _ => (y < 4) as u8 as f32,
    };

    write_mei_video(&still(1, value), &path, &VideoOptions::default()).unwrap();
    let grey = read_video(&path);
    assert_colour(colour_at(&grey, 0, 10, 2), [255, 255, 255]);
    assert_colour(colour_at(&grey, 0, 10, 12), [0, 0, 0]);

    write_mei_video(&still(2, value), &path, &VideoOptions::default()).unwrap();
    let green_uv = read_video(&path);
    assert_colour(colour_at(&green_uv, 0, 10, 2), [0, 255, 0]); // green
    assert_colour(colour_at(&green_uv, 0, 10, 12), [255, 0, 255]); // UV: purple, not red

    write_mei_video(&still(3, value), &path, &VideoOptions::default()).unwrap();
    let rgb = read_video(&path);
    assert_colour(colour_at(&rgb, 0, 10, 2), [255, 0, 0]);
    assert_colour(colour_at(&rgb, 0, 10, 12), [0, 255, 0]);
    assert_colour(colour_at(&rgb, 0, 1, 2), [255, 0, 255]);
}

#[test]
fn values_are_normalised_as_openretina() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grey.mp4");
    // Columns 0..16 hold -3, -2.6, ... : min and max become black and white, the rest linear.
    let ramp = |_c: usize, _y: usize, x: usize| -3.0 + 0.4 * x as f32;
    write_mei_video(&still(1, ramp), &path, &VideoOptions::default()).unwrap();
    let video = read_video(&path);
    for x in 0..W {
        let level = (255.0 * (x as f32 / (W - 1) as f32)) as u8;
        assert_colour(colour_at(&video, 0, 5, x), [level; 3]);
    }

    // A fixed range: values outside are clipped.
    let fixed = VideoOptions { value_range: Some((-1.0, 1.0)), ..VideoOptions::default() };
    write_mei_video(&still(1, ramp), &path, &fixed).unwrap();
    let video = read_video(&path);
    assert_colour(colour_at(&video, 0, 5, 0), [0; 3]); // -3
    assert_colour(colour_at(&video, 0, 5, 5), [0; 3]); // -1
    assert_colour(colour_at(&video, 0, 5, 7), [102; 3]); // -0.2
    assert_colour(colour_at(&video, 0, 5, 8), [153; 3]); // 0.2
    assert_colour(colour_at(&video, 0, 5, 15), [255; 3]); // 3

    // A constant stimulus is mid-grey (openretina would divide by zero).
    write_mei_video(&still(1, |_, _, _| 0.7), &path, &VideoOptions::default()).unwrap();
    assert_colour(colour_at(&read_video(&path), 0, 5, 5), [128; 3]);
}

#[test]
fn options_set_frame_rate_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fast_small.mp4");
    let options = VideoOptions { fps: 25, scale: Some(4), value_range: None };
    write_mei_video(&moving_bar(2), &path, &options).unwrap();
    let video = read_video(&path);
    assert_eq!((video.width, video.height), (64, 72));
    assert_eq!(video.frames, 50);
    assert_eq!(video.duration, Duration::from_secs(2));

    // An odd stimulus side gets an even automatic scale: 17 × 15 becomes 306 × 270.
    let odd = Tensor::<f32>::new(vec![1, 3, 17, 15], (0..3 * 17 * 15).map(|i| i as f32).collect()).unwrap();
    write_mei_video(&odd, &path, &VideoOptions::default()).unwrap();
    let size = {
        let file = File::open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        let reader = mp4::Mp4Reader::read_header(BufReader::new(file), len).unwrap();
        let track = reader.tracks().values().next().unwrap();
        (track.width(), track.height())
    };
    assert_eq!(size, (270, 306));
}

#[test]
fn bad_path_gives_an_error_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    // A folder that does not exist, and a "folder" that is a file (unwritable even for root).
    let not_a_folder = dir.path().join("file.txt");
    std::fs::write(&not_a_folder, b"x").unwrap();
    for path in [dir.path().join("missing").join("mei.mp4"), not_a_folder.join("mei.mp4")] {
        let err = write_mei_video(&moving_bar(2), &path, &VideoOptions::default()).unwrap_err();
        assert!(err.message().contains("mei.mp4"), "{err}");
        assert!(!err.message().contains('\n'));
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["file.txt"]);
}

#[test]
fn bad_stimuli_and_options_give_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.mp4");
    let default = VideoOptions::default();
    let four_channels = Tensor::<f32>::zeros(vec![4, 2, H, W]);
    let three_dims = Tensor::<f32>::zeros(vec![2, H, W]);
    let no_time = Tensor::<f32>::zeros(vec![2, 0, H, W]);
    let odd = Tensor::<f32>::zeros(vec![1, 2, 17, 15]);
    let mut with_nan = moving_bar(1);
    with_nan.data[7] = f32::NAN;
    for (stimulus, options, expected) in [
        (&four_channels, &default, "1, 2 or 3 colour channels"),
        (&three_dims, &default, "(channels, time, height, width)"),
        (&no_time, &default, "empty"),
        (&with_nan, &default, "NaN"),
        (&odd, &VideoOptions { scale: Some(3), ..default.clone() }, "odd side"),
        (&moving_bar(1), &VideoOptions { scale: Some(400), ..default.clone() }, "larger than"),
        (&moving_bar(1), &VideoOptions { fps: 0, ..default.clone() }, "fps"),
        (&moving_bar(1), &VideoOptions { value_range: Some((1.0, 1.0)), ..default.clone() }, "lo < hi"),
    ] {
        let err = write_mei_video(stimulus, &path, options).unwrap_err();
        assert!(err.message().contains(expected), "{err}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file written");
}

#[test]
fn same_stimulus_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.mp4"), dir.path().join("b.mp4"));
    write_mei_video(&moving_bar(2), &a, &VideoOptions::default()).unwrap();
    write_mei_video(&moving_bar(2), &b, &VideoOptions::default()).unwrap();
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
}
