//! MEI videos: a stimulus of shape (channels, time, height, width) written as an H.264 `.mp4` that
//! browsers and standard players play, one stimulus time step per video frame (5 per second by
//! default, as openretina's `save_stimulus_to_mp4_video`).
//!
//! **Encoder.** The `openh264` crate compiles Cisco's OpenH264 C++ source that ships inside the crate
//! (no system library, no download; about 1 minute of one core, once). It compresses: 50 frames of
//! 256 × 288 take 5 kB (a moving bar) to 210 kB (every pixel changing every frame). The pure-Rust
//! `less-avc` builds in seconds but stores raw I_PCM macroblocks: 5.6 MB for any such video.
//! The stream is Constrained Baseline, 4:2:0, which every H.264 decoder plays; the `mp4` submodule
//! writes the container (header before the frames, so a browser can start before the file loaded).
//!
//! **Values to brightness**, as openretina: `floor(255 · (x − lo) / (hi − lo))`, with `lo`, `hi` the
//! minimum and maximum over the whole stimulus (all channels and time steps together, so the
//! channels keep their relative contrast). [`VideoOptions::value_range`] fixes `lo`, `hi` instead
//! (values outside are clipped), e.g. to show several MEIs on one scale. A constant stimulus, where
//! openretina divides by zero, becomes mid-grey.
//!
//! **Colours.** 1 channel: grey. 2 channels (green and UV cones): the first channel in green, the
//! second in purple (red + blue), as openretina shows them on screen (`update_video`,
//! `prepare_video_for_display`). openretina's mp4 writer hands RGB-ordered frames to OpenCV, which
//! reads them as BGR, so its 2-channel videos show UV in red (and its 3-channel videos swap red and
//! blue); we do not copy that. 3 channels: red, green, blue. RGB goes to YUV with the BT.601
//! limited-range matrix, which the stream declares in its header (VUI).
//!
//! **Size.** Each stimulus pixel becomes a square block (nearest neighbour), by default the smallest
//! scale that makes the short side at least 256 px with both sides even (yuv420p needs even sides):
//! 18 × 16 becomes 288 × 256.

mod mp4;

use std::path::Path;

use openh264::encoder::{
    ColorPrimaries, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, MatrixCoefficients, Profile, RateControlMode,
    TransferCharacteristics, VuiConfig,
};
use openh264::formats::YUVBuffer;
use openh264::OpenH264API;

use crate::error::{Error, Result};
use crate::output::write_atomic;
use crate::tensor::Tensor;

/// The short side that the automatic scale reaches at least, in pixels.
const MIN_SHORT_SIDE: usize = 256;
/// OpenH264's largest frame: 3840 × 2160 (either way round).
const MAX_LONG_SIDE: usize = 3840;
const MAX_SHORT_SIDE: usize = 2160;
const MAX_FPS: u32 = 240;

/// How [`write_mei_video`] turns a stimulus into a video.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoOptions {
    /// Frames (stimulus time steps) per second; openretina uses 5.
    pub fps: u32,
    /// Each stimulus pixel becomes a `scale × scale` block. `None`: the smallest scale that makes the
    /// short side at least 256 px and both sides even.
    pub scale: Option<usize>,
    /// The values shown black and full brightness: `None` takes the stimulus minimum and maximum,
    /// as openretina does; `Some((lo, hi))` clips to that range.
    pub value_range: Option<(f32, f32)>,
}

impl Default for VideoOptions {
    fn default() -> Self {
        VideoOptions { fps: 5, scale: None, value_range: None }
    }
}

/// Write `stimulus` (channels, time, height, width; 1, 2 or 3 channels) to `path` as an H.264 mp4,
/// one frame per time step. The file appears complete or not at all.
pub fn write_mei_video(stimulus: &Tensor<f32>, path: &Path, options: &VideoOptions) -> Result<()> {
    let &[channels, time_steps, height, width] = stimulus.shape.as_slice() else {
        return Err(Error::file(
            path,
            format!("a video needs a stimulus of shape (channels, time, height, width), got {:?}", stimulus.shape),
        ));
    };
    if !(1..=3).contains(&channels) {
        return Err(Error::file(path, format!("a video needs 1, 2 or 3 colour channels, got {channels}")));
    }
    if time_steps == 0 || height == 0 || width == 0 {
        return Err(Error::file(path, format!("cannot make a video of an empty stimulus {:?}", stimulus.shape)));
    }
    if !(1..=MAX_FPS).contains(&options.fps) {
        return Err(Error::file(path, format!("fps must be 1 to {MAX_FPS}, got {}", options.fps)));
    }
    let scale = frame_scale(height, width, options.scale).map_err(|e| Error::file(path, e))?;
    let to_byte = brightness_mapping(&stimulus.data, options.value_range).map_err(|e| Error::file(path, e))?;

    let frame = FrameSize { width: width * scale, height: height * scale };
    let mut encoder = H264Encoder::new(options.fps).map_err(|e| Error::file(path, e))?;
    let plane = height * width;
    for t in 0..time_steps {
        // The (height, width) image of channel `c` at time `t`.
        let image = |c: usize| &stimulus.data[(c * time_steps + t) * plane..][..plane];
        let rgb = match channels {
            1 => [image(0), image(0), image(0)],
            2 => [image(1), image(0), image(1)],
            _ => [image(0), image(1), image(2)],
        };
        let yuv = render_frame(rgb, width, scale, frame, &to_byte);
        encoder.encode(&yuv, t).map_err(|e| Error::file(path, e))?;
    }
    let bytes = encoder.finish(frame, options.fps).map_err(|e| Error::file(path, e))?;
    write_atomic(path, &bytes)
}

#[derive(Debug, Clone, Copy)]
struct FrameSize {
    width: usize,
    height: usize,
}

/// The upscaling factor: the one asked for, checked, or the automatic one (see [`VideoOptions::scale`]).
fn frame_scale(height: usize, width: usize, asked: Option<usize>) -> Result<usize, String> {
    let (short, long) = (height.min(width), height.max(width));
    let scale = match asked {
        Some(0) => return Err("the video scale must be at least 1".into()),
        Some(scale) => scale,
        None => {
            let scale = MIN_SHORT_SIDE.div_ceil(short).max(1);
            // An odd scale times an odd side is odd: the next (even) scale fixes both sides.
            if (height * scale) % 2 == 1 || (width * scale) % 2 == 1 {
                scale + 1
            } else {
                scale
            }
        }
    };
    let (frame_height, frame_width) = (height.saturating_mul(scale), width.saturating_mul(scale));
    if frame_height % 2 == 1 || frame_width % 2 == 1 {
        return Err(format!(
            "a {frame_width} × {frame_height} video frame has an odd side, which yuv420p cannot hold; use an even scale"
        ));
    }
    if long.saturating_mul(scale) > MAX_LONG_SIDE || short.saturating_mul(scale) > MAX_SHORT_SIDE {
        return Err(format!(
            "a {frame_width} × {frame_height} video frame is larger than the encoder's {MAX_LONG_SIDE} × {MAX_SHORT_SIDE}; use a smaller scale"
        ));
    }
    Ok(scale)
}

/// The function from stimulus values to 0..=255, as openretina (see the module doc).
fn brightness_mapping(values: &[f32], range: Option<(f32, f32)>) -> Result<impl Fn(f32) -> u8, String> {
    if values.iter().any(|v| !v.is_finite()) {
        return Err("the stimulus contains NaN or infinite values".into());
    }
    let (lo, hi) = match range {
        Some((lo, hi)) if lo.is_finite() && hi.is_finite() && lo < hi => (lo, hi),
        Some((lo, hi)) => {
            return Err(format!("the video value range must be two finite values lo < hi, got {lo}, {hi}"))
        }
        None => values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v))),
    };
    let constant = hi <= lo;
    // Same operation order and truncation as openretina's numpy code (float32, then `astype(uint8)`).
    Ok(move |v: f32| if constant { 128 } else { (255.0 * ((v.clamp(lo, hi) - lo) / (hi - lo))) as u8 })
}

/// One video frame in YUV 4:2:0: the red, green and blue stimulus images (height × width each)
/// mapped to bytes, upscaled by `scale` (nearest neighbour) and converted with BT.601 limited range.
fn render_frame(
    rgb: [&[f32]; 3],
    width: usize,
    scale: usize,
    frame: FrameSize,
    to_byte: &impl Fn(f32) -> u8,
) -> YUVBuffer {
    // Map each stimulus pixel to bytes once; the frame repeats each `scale` x `scale` times.
    let small: Vec<[i32; 3]> =
        (0..rgb[0].len()).map(|i| rgb.map(|image| to_byte(image[i]) as i32)).collect();
    let pixel = |y: usize, x: usize| small[(y / scale) * width + x / scale];
    let (half_width, half_height) = (frame.width / 2, frame.height / 2);
    let mut yuv = vec![0u8; frame.width * frame.height * 3 / 2];
    let (luma, chroma) = yuv.split_at_mut(frame.width * frame.height);
    let (cb, cr) = chroma.split_at_mut(half_width * half_height);
    for y in 0..frame.height {
        for x in 0..frame.width {
            let [r, g, b] = pixel(y, x);
            luma[y * frame.width + x] = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
        }
    }
    for y in 0..half_height {
        for x in 0..half_width {
            // Chroma of the mean colour of the 2 × 2 block it covers.
            let block =
                [pixel(2 * y, 2 * x), pixel(2 * y, 2 * x + 1), pixel(2 * y + 1, 2 * x), pixel(2 * y + 1, 2 * x + 1)];
            let [r, g, b] = [0, 1, 2].map(|c| (block.iter().map(|p| p[c]).sum::<i32>() + 2) / 4);
            cb[y * half_width + x] = (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128) as u8;
            cr[y * half_width + x] = (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128) as u8;
        }
    }
    YUVBuffer::from_vec(yuv, frame.width, frame.height)
}

/// OpenH264 set up for short, small videos, and the encoded frames it produced.
struct H264Encoder {
    encoder: Encoder,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    samples: Vec<mp4::Sample>,
}

impl H264Encoder {
    fn new(fps: u32) -> Result<Self, String> {
        let bt601 = VuiConfig::new()
            .color_primaries(ColorPrimaries::Smpte170M)
            .transfer_characteristics(TransferCharacteristics::Smpte170M)
            .matrix_coefficients(MatrixCoefficients::Smpte170M)
            .full_range(false);
        let config = EncoderConfig::new()
            .profile(Profile::Baseline)
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            // Constant quality without rate control: every time step becomes a frame, none is dropped
            // to meet a bitrate (and OpenH264 prints no warning about skipping being off).
            .rate_control_mode(RateControlMode::Off)
            .skip_frames(false)
            // Blocky upscaled frames need no elaborate search; the fastest mode encodes ~1.7x quicker (measured on MEI videos).
            .complexity(Complexity::Low)
            .num_threads(1)
            .vui(bt601);
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| format!("cannot start the H.264 encoder: {e}"))?;
        Ok(H264Encoder { encoder, sps: None, pps: None, samples: Vec::new() })
    }

    /// Encode one frame into one MP4 sample: its NAL units, each prefixed by its length (the
    /// parameter sets go to the file header instead).
    fn encode(&mut self, frame: &YUVBuffer, index: usize) -> Result<(), String> {
        let encoded = self.encoder.encode(frame).map_err(|e| format!("H.264 encoding of frame {index} failed: {e}"))?;
        if matches!(encoded.frame_type(), FrameType::Skip | FrameType::Invalid) {
            return Err(format!("the H.264 encoder dropped frame {index}"));
        }
        let mut sample = mp4::Sample { data: Vec::new(), is_sync: false };
        for layer in (0..encoded.num_layers()).filter_map(|i| encoded.layer(i)) {
            for nal in (0..layer.nal_count()).filter_map(|i| layer.nal_unit(i)).map(strip_start_code) {
                match nal.first().map(|header| header & 0x1f) {
                    None => {}
                    Some(NAL_SPS) => keep_parameter_set(&mut self.sps, nal)?,
                    Some(NAL_PPS) => keep_parameter_set(&mut self.pps, nal)?,
                    Some(kind) => {
                        sample.is_sync |= kind == NAL_IDR_SLICE;
                        sample.data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                        sample.data.extend_from_slice(nal);
                    }
                }
            }
        }
        if sample.data.is_empty() {
            return Err(format!("the H.264 encoder gave no picture for frame {index}"));
        }
        self.samples.push(sample);
        Ok(())
    }

    /// The whole `.mp4` file.
    fn finish(self, frame: FrameSize, fps: u32) -> Result<Vec<u8>, String> {
        let (Some(sps), Some(pps)) = (self.sps, self.pps) else {
            return Err("the H.264 encoder gave no sequence or picture parameter set".into());
        };
        let track = mp4::VideoTrack {
            width: frame.width as u16,
            height: frame.height as u16,
            fps,
            sps,
            pps,
            samples: self.samples,
        };
        mp4::mux(&track)
    }
}

const NAL_IDR_SLICE: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

/// OpenH264 writes NAL units in Annex B form (`00 00 00 01` or `00 00 01` before each); MP4 wants them bare.
fn strip_start_code(nal: &[u8]) -> &[u8] {
    nal.strip_prefix(&[0, 0, 0, 1]).or_else(|| nal.strip_prefix(&[0, 0, 1])).unwrap_or(nal)
}

/// The MP4 header holds one SPS and one PPS; OpenH264 repeats them unchanged before each key frame.
fn keep_parameter_set(kept: &mut Option<Vec<u8>>, nal: &[u8]) -> Result<(), String> {
    match kept {
        None => *kept = Some(nal.to_vec()),
        Some(first) if first.as_slice() == nal => {}
        Some(_) => return Err("the H.264 encoder changed its parameter sets mid-stream".into()),
    }
    Ok(())
}
