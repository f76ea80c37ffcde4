//! The few MP4 (ISO base media file format) boxes that one H.264 video track needs:
//! `ftyp`, then `moov` with the track's description and sample tables, then `mdat` with the frames.
//! `moov` comes first ("fast start") so a browser knows duration and size before loading the frames.
//! All frames sit in one chunk; Baseline H.264 has no B-frames, so decode order is display order.

/// One encoded frame: its NAL units, each prefixed by its 4-byte big-endian length.
pub(super) struct Sample {
    pub data: Vec<u8>,
    /// A key frame (IDR), where playback can start.
    pub is_sync: bool,
}

pub(super) struct VideoTrack {
    pub width: u16,
    pub height: u16,
    pub fps: u32,
    /// The sequence and picture parameter sets, without start code.
    pub sps: Vec<u8>,
    pub pps: Vec<u8>,
    pub samples: Vec<Sample>,
}

/// Durations in the movie header are in milliseconds.
const MOVIE_TIMESCALE: u32 = 1000;
/// Media time units per frame: the track's timescale is `fps * TICKS_PER_FRAME`.
const TICKS_PER_FRAME: u32 = 1000;

/// The complete file.
pub(super) fn mux(track: &VideoTrack) -> Result<Vec<u8>, String> {
    if track.sps.len() < 4 {
        return Err("the H.264 sequence parameter set is too short".into());
    }
    let frames = track.samples.len() as u64;
    let media_bytes: usize = track.samples.iter().map(|s| s.data.len()).sum();
    if frames == 0 || media_bytes > (u32::MAX - 8) as usize {
        return Err(format!("cannot write {frames} frames of {media_bytes} bytes in total into one mp4"));
    }
    let ftyp = file_type();
    // The frames' offset in the file depends on the size of `moov`, which does not depend on the offset.
    let moov_size = movie(track, 0).len();
    let media_offset = (ftyp.len() + moov_size + 8) as u32;
    let moov = movie(track, media_offset);

    let mut file = Vec::with_capacity(media_offset as usize + media_bytes);
    file.extend_from_slice(&ftyp);
    file.extend_from_slice(&moov);
    file.extend_from_slice(&((media_bytes + 8) as u32).to_be_bytes());
    file.extend_from_slice(b"mdat");
    for sample in &track.samples {
        file.extend_from_slice(&sample.data);
    }
    Ok(file)
}

/// Big-endian box content.
#[derive(Default)]
struct Content(Vec<u8>);

impl Content {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    fn zeros(mut self, n: usize) -> Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    /// The start of a "full box": version 0 and 24 bits of flags.
    fn full(flags: u32) -> Self {
        Content::default().u32(flags)
    }
    /// This content wrapped in a box of type `kind`.
    fn boxed(self, kind: &[u8; 4]) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.0.len() + 8);
        b.extend_from_slice(&(self.0.len() as u32 + 8).to_be_bytes());
        b.extend_from_slice(kind);
        b.extend_from_slice(&self.0);
        b
    }
}

/// Boxes one after another, wrapped in a box of type `kind`.
fn container(kind: &[u8; 4], children: &[Vec<u8>]) -> Vec<u8> {
    Content(children.concat()).boxed(kind)
}

/// The identity transform of `mvhd` and `tkhd` (16.16 and 2.30 fixed point).
const UNITY_MATRIX: [u32; 9] = [0x1_0000, 0, 0, 0, 0x1_0000, 0, 0, 0, 0x4000_0000];

fn unity_matrix(mut c: Content) -> Content {
    for v in UNITY_MATRIX {
        c = c.u32(v);
    }
    c
}

fn file_type() -> Vec<u8> {
    Content::default().bytes(b"isom").u32(0x200).bytes(b"isomiso2avc1mp41").boxed(b"ftyp")
}

fn movie(track: &VideoTrack, media_offset: u32) -> Vec<u8> {
    let frames = track.samples.len() as u64;
    let duration_ms = (frames * u64::from(MOVIE_TIMESCALE)).div_ceil(u64::from(track.fps)) as u32;
    let media_timescale = track.fps * TICKS_PER_FRAME;
    let media_duration = (frames * u64::from(TICKS_PER_FRAME)) as u32;

    let movie_header = unity_matrix(
        Content::full(0)
            .u32(0) // creation time: left unset so the same video gives the same bytes
            .u32(0) // modification time
            .u32(MOVIE_TIMESCALE)
            .u32(duration_ms)
            .u32(0x1_0000) // playback rate 1.0
            .u16(0x100) // volume 1.0
            .zeros(10),
    )
    .zeros(24)
    .u32(2) // next track id
    .boxed(b"mvhd");

    let track_header = unity_matrix(
        Content::full(0x3) // enabled, in movie
            .u32(0)
            .u32(0)
            .u32(1) // track id
            .u32(0)
            .u32(duration_ms)
            .zeros(8)
            .u16(0) // layer
            .u16(0) // alternate group
            .u16(0) // volume: none for video
            .u16(0),
    )
    .u32(u32::from(track.width) << 16)
    .u32(u32::from(track.height) << 16)
    .boxed(b"tkhd");

    let media_header = Content::full(0)
        .u32(0)
        .u32(0)
        .u32(media_timescale)
        .u32(media_duration)
        .u16(0x55c4) // language "und"
        .u16(0)
        .boxed(b"mdhd");
    let handler = Content::full(0).u32(0).bytes(b"vide").zeros(12).bytes(b"VideoHandler\0").boxed(b"hdlr");
    let video_header = Content::full(0x1).zeros(8).boxed(b"vmhd");
    let data_reference =
        container(b"dinf", &[Content::full(0).u32(1).bytes(&Content::full(0x1).boxed(b"url ")).boxed(b"dref")]);
    let media_info = container(b"minf", &[video_header, data_reference, sample_table(track, media_offset)]);
    let media = container(b"mdia", &[media_header, handler, media_info]);
    let trak = container(b"trak", &[track_header, media]);
    container(b"moov", &[movie_header, trak])
}

fn sample_table(track: &VideoTrack, media_offset: u32) -> Vec<u8> {
    let frames = track.samples.len() as u32;
    let description = Content::full(0).u32(1).bytes(&sample_entry(track)).boxed(b"stsd");
    // Every frame lasts one frame period.
    let times = Content::full(0).u32(1).u32(frames).u32(TICKS_PER_FRAME).boxed(b"stts");
    let key_frames: Vec<u32> =
        track.samples.iter().enumerate().filter(|(_, s)| s.is_sync).map(|(i, _)| i as u32 + 1).collect();
    let mut sync = Content::full(0).u32(key_frames.len() as u32);
    for number in key_frames {
        sync = sync.u32(number);
    }
    // One chunk holding all frames, starting right after the `mdat` header.
    let chunks = Content::full(0).u32(1).u32(1).u32(frames).u32(1).boxed(b"stsc");
    let mut sizes = Content::full(0).u32(0).u32(frames);
    for sample in &track.samples {
        sizes = sizes.u32(sample.data.len() as u32);
    }
    let offsets = Content::full(0).u32(1).u32(media_offset).boxed(b"stco");
    container(b"stbl", &[description, times, sync.boxed(b"stss"), chunks, sizes.boxed(b"stsz"), offsets])
}

/// `avc1`: the visual sample entry with the decoder configuration (`avcC`).
fn sample_entry(track: &VideoTrack) -> Vec<u8> {
    let config = Content::default()
        .u8(1) // configuration version
        .u8(track.sps[1]) // profile, compatibility flags and level, copied from the SPS
        .u8(track.sps[2])
        .u8(track.sps[3])
        .u8(0xfc | 3) // NAL lengths take 4 bytes
        .u8(0xe0 | 1) // one SPS
        .u16(track.sps.len() as u16)
        .bytes(&track.sps)
        .u8(1) // one PPS
        .u16(track.pps.len() as u16)
        .bytes(&track.pps)
        .boxed(b"avcC");
    Content::default()
        .zeros(6)
        .u16(1) // data reference index
        .zeros(16)
        .u16(track.width)
        .u16(track.height)
        .u32(0x48_0000) // 72 dpi, both ways
        .u32(0x48_0000)
        .u32(0)
        .u16(1) // frames per sample
        .zeros(32) // compressor name
        .u16(0x18) // depth: colour, no alpha
        .u16(0xffff) // no colour table
        .bytes(&config)
        .boxed(b"avc1")
}
