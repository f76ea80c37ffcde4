//! A baseline JPEG encoder (JFIF, YCbCr 4:2:0, the example quantisation and Huffman tables of
//! ITU-T T.81 Annex K) made for figures. Most 16 x 16 blocks of a figure are one flat colour (white
//! background, heat-map cells, shading): those are recognised on the RGB pixels and written as their
//! DC terms alone, so a 300 dpi figure encodes several times faster than with a general encoder.
//! Rows are pulled from the caller 16 at a time, so the whole image never has to be in memory.

use std::f32::consts::PI;

/// Rows per band: one row of 4:2:0 MCUs.
pub(crate) const BAND_ROWS: u32 = 16;

/// An image handed over one band of rows at a time.
pub(crate) trait Bands {
    /// RGBA pixels (alpha ignored) of rows `[top, top + BAND_ROWS)`, `width * 4` bytes per row;
    /// rows past the image bottom repeat its last row.
    fn band(&mut self, top: u32) -> &[u8];
}

/// Encode a `width x height` image drawn by `image`, at `quality` (1..=100, as libjpeg's).
pub(crate) fn encode(
    width: u32,
    height: u32,
    dpi: u32,
    quality: u8,
    image: &mut impl Bands,
) -> Result<Vec<u8>, String> {
    if width == 0 || height == 0 || width > 65_535 || height > 65_535 {
        return Err(format!("JPEG cannot hold a {width} x {height} image"));
    }
    let luma_q = scaled_table(&LUMA_QUANT, quality);
    let chroma_q = scaled_table(&CHROMA_QUANT, quality);
    let mut out = Vec::with_capacity((width * height / 8) as usize);
    write_headers(&mut out, width as u16, height as u16, dpi.min(65_535) as u16, &luma_q, &chroma_q);

    let tables = [
        (HuffmanCodes::new(&LUMA_DC_LENGTHS, &DC_VALUES), HuffmanCodes::new(&LUMA_AC_LENGTHS, &LUMA_AC_VALUES)),
        (HuffmanCodes::new(&CHROMA_DC_LENGTHS, &DC_VALUES), HuffmanCodes::new(&CHROMA_AC_LENGTHS, &CHROMA_AC_VALUES)),
    ];
    let dct = DctTable::new();
    let luma_div: [f32; 64] = std::array::from_fn(|k| luma_q[k] as f32);
    let chroma_div: [f32; 64] = std::array::from_fn(|k| chroma_q[k] as f32);
    // The bits of a flat MCU whose colour equals the previous blocks' (all DC differences zero).
    let repeat_flat = [0, 0, 0, 0, 1, 1].iter().fold((0u64, 0u32), |(bits, n), &t: &usize| {
        let ((dc_codes, ac_codes), zero_dc, end_of_block) = (&tables[t], 0, 0);
        let (dc, dc_length) = dc_codes.0[zero_dc];
        let (eob, eob_length) = ac_codes.0[end_of_block];
        let bits = (((bits << dc_length) | dc as u64) << eob_length) | eob as u64;
        (bits, n + dc_length as u32 + eob_length as u32)
    });

    let (w, h) = (width as usize, height as usize);
    let mcus_x = w.div_ceil(16);
    let mut bits = BitWriter { out, buffer: 0, count: 0 };
    let mut previous_dc = [0i32; 3];
    let (mut ys, mut cbs, mut crs) = ([0f32; 256], [0f32; 64], [0f32; 64]);
    for band_top in (0..h).step_by(16) {
        let band = image.band(band_top as u32);
        for mx in 0..mcus_x {
            // Columns past the right edge repeat the last column.
            let pixel = |x: usize, y: usize| {
                let i = (y * w + (mx * 16 + x).min(w - 1)) * 4;
                [band[i], band[i + 1], band[i + 2]]
            };
            if is_flat(band, w, mx * 16) {
                let (y, cb, cr) = ycbcr(pixel(0, 0));
                let dc = |v: f32, q: u16| round(8.0 * (v - 128.0) / q as f32);
                let dcs = [dc(y, luma_q[0]), dc(cb, chroma_q[0]), dc(cr, chroma_q[0])];
                if dcs == previous_dc {
                    bits.put(repeat_flat.0, repeat_flat.1);
                    continue;
                }
                for _ in 0..4 {
                    bits.flat_block(dcs[0], &mut previous_dc[0], &tables[0]);
                }
                bits.flat_block(dcs[1], &mut previous_dc[1], &tables[1]);
                bits.flat_block(dcs[2], &mut previous_dc[2], &tables[1]);
                continue;
            }
            let rgb: [[f32; 3]; 256] = std::array::from_fn(|i| pixel(i % 16, i / 16).map(|c| c as f32));
            for (y, &[r, g, b]) in ys.iter_mut().zip(&rgb) {
                *y = 0.299 * r + 0.587 * g + 0.114 * b;
            }
            // Chroma of the mean colour of each 2 x 2 square (the conversion is linear).
            for k in 0..64 {
                let i = (k / 8) * 32 + (k % 8) * 2;
                let mean = |c: usize| (rgb[i][c] + rgb[i + 1][c] + rgb[i + 16][c] + rgb[i + 17][c]) / 4.0;
                let (_, cb, cr) = ycbcr_f32(mean(0), mean(1), mean(2));
                (cbs[k], crs[k]) = (cb, cr);
            }
            for (bx, by) in [(0, 0), (8, 0), (0, 8), (8, 8)] {
                let block: [f32; 64] = std::array::from_fn(|k| ys[(by + k / 8) * 16 + bx + k % 8]);
                let coefficients = dct.quantised(&block, &luma_div);
                bits.block(&coefficients, &mut previous_dc[0], &tables[0]);
            }
            bits.block(&dct.quantised(&cbs, &chroma_div), &mut previous_dc[1], &tables[1]);
            bits.block(&dct.quantised(&crs, &chroma_div), &mut previous_dc[2], &tables[1]);
        }
    }
    let mut out = bits.finish();
    out.extend_from_slice(&[0xFF, 0xD9]);
    Ok(out)
}

/// Whether the 16 x 16 pixels from column `x0` of a band are one colour: the first row repeats its
/// first pixel and every row equals the first (compared as byte slices, which is fast).
fn is_flat(band: &[u8], width: usize, x0: usize) -> bool {
    let columns = (width - x0).min(16) * 4;
    let row = |y: usize| &band[(y * width + x0) * 4..(y * width + x0) * 4 + columns];
    let first = row(0);
    // Each pixel equals the one before it; at the right edge the padding repeats the last column.
    first[4..] == first[..columns - 4] && (1..16).all(|y| row(y) == first)
}

/// `value` rounded half away from zero (as `f32::round`, without a library call).
fn round(value: f32) -> i32 {
    (value + 0.5f32.copysign(value)) as i32
}

/// JFIF's RGB to YCbCr.
fn ycbcr([r, g, b]: [u8; 3]) -> (f32, f32, f32) {
    ycbcr_f32(r as f32, g as f32, b as f32)
}

fn ycbcr_f32(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    (
        0.299 * r + 0.587 * g + 0.114 * b,
        -0.168_736 * r - 0.331_264 * g + 0.5 * b + 128.0,
        0.5 * r - 0.418_688 * g - 0.081_312 * b + 128.0,
    )
}

/// An Annex K table scaled to `quality` as libjpeg does, in zigzag order.
fn scaled_table(base: &[u16; 64], quality: u8) -> [u16; 64] {
    let quality = quality.clamp(1, 100) as u32;
    let scale = if quality < 50 { 5000 / quality } else { 200 - 2 * quality };
    std::array::from_fn(|k| ((base[ZIGZAG[k]] as u32 * scale + 50) / 100).clamp(1, 255) as u16)
}

fn write_headers(out: &mut Vec<u8>, width: u16, height: u16, dpi: u16, luma_q: &[u16; 64], chroma_q: &[u16; 64]) {
    let segment = |out: &mut Vec<u8>, marker: u8, body: &[u8]| {
        out.extend_from_slice(&[0xFF, marker]);
        out.extend_from_slice(&(body.len() as u16 + 2).to_be_bytes());
        out.extend_from_slice(body);
    };
    out.extend_from_slice(&[0xFF, 0xD8]);
    let mut jfif = b"JFIF\0\x01\x01\x01".to_vec(); // version 1.1, density in dots per inch
    jfif.extend_from_slice(&dpi.to_be_bytes());
    jfif.extend_from_slice(&dpi.to_be_bytes());
    jfif.extend_from_slice(&[0, 0]);
    segment(out, 0xE0, &jfif);
    let mut dqt = vec![0u8];
    dqt.extend(luma_q.iter().map(|&q| q as u8));
    dqt.push(1);
    dqt.extend(chroma_q.iter().map(|&q| q as u8));
    segment(out, 0xDB, &dqt);
    let [hh, hl] = height.to_be_bytes();
    let [wh, wl] = width.to_be_bytes();
    // 8-bit samples, three components: Y sampled 2 x 2 with table 0, Cb and Cr 1 x 1 with table 1.
    segment(out, 0xC0, &[8, hh, hl, wh, wl, 3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    let mut dht = Vec::new();
    for (class_id, lengths, values) in [
        (0x00, &LUMA_DC_LENGTHS, &DC_VALUES[..]),
        (0x10, &LUMA_AC_LENGTHS, &LUMA_AC_VALUES[..]),
        (0x01, &CHROMA_DC_LENGTHS, &DC_VALUES[..]),
        (0x11, &CHROMA_AC_LENGTHS, &CHROMA_AC_VALUES[..]),
    ] {
        dht.push(class_id);
        dht.extend_from_slice(lengths);
        dht.extend_from_slice(values);
    }
    segment(out, 0xC4, &dht);
    segment(out, 0xDA, &[3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0]);
}

/// The 2-D DCT-II of an 8 x 8 block as two passes of an 8 x 8 matrix product.
struct DctTable {
    /// `basis[u * 8 + x] = c(u) / 2 * cos((2x + 1) u pi / 16)`.
    basis: [f32; 64],
}

impl DctTable {
    fn new() -> DctTable {
        DctTable {
            basis: std::array::from_fn(|i| {
                let (u, x) = ((i / 8) as f32, (i % 8) as f32);
                let c = if u == 0.0 { std::f32::consts::FRAC_1_SQRT_2 } else { 1.0 };
                c / 2.0 * ((2.0 * x + 1.0) * u * PI / 16.0).cos()
            }),
        }
    }

    /// Level-shifted, transformed and quantised coefficients of `block` (samples 0..255), in zigzag
    /// order; `divisors` in zigzag order.
    fn quantised(&self, block: &[f32; 64], divisors: &[f32; 64]) -> [i32; 64] {
        // A flat block (often chroma next to grey text and frames) has only its DC term.
        if block.iter().all(|&v| v == block[0]) {
            let mut dc_only = [0; 64];
            dc_only[0] = round(8.0 * (block[0] - 128.0) / divisors[0]);
            return dc_only;
        }
        let b = &self.basis;
        // Rows first: t[y * 8 + u] = sum over x of (block[y][x] - 128) * basis[u][x].
        let mut t = [0f32; 64];
        for y in 0..8 {
            let row: [f32; 8] = std::array::from_fn(|x| block[y * 8 + x] - 128.0);
            for u in 0..8 {
                let mut sum = 0.0;
                for x in 0..8 {
                    sum += row[x] * b[u * 8 + x];
                }
                t[y * 8 + u] = sum;
            }
        }
        // Then columns: c[v * 8 + u] = sum over y of t[y][u] * basis[v][y].
        let mut c = [0f32; 64];
        for v in 0..8 {
            for y in 0..8 {
                let weight = b[v * 8 + y];
                for u in 0..8 {
                    c[v * 8 + u] += t[y * 8 + u] * weight;
                }
            }
        }
        std::array::from_fn(|k| round(c[ZIGZAG[k]] / divisors[k]))
    }
}

/// Canonical Huffman codes by symbol: (code, length).
struct HuffmanCodes([(u16, u8); 256]);

impl HuffmanCodes {
    fn new(lengths: &[u8; 16], values: &[u8]) -> HuffmanCodes {
        let mut codes = [(0u16, 0u8); 256];
        let (mut code, mut k) = (0u16, 0usize);
        for (i, &count) in lengths.iter().enumerate() {
            for _ in 0..count {
                codes[values[k] as usize] = (code, i as u8 + 1);
                code += 1;
                k += 1;
            }
            code <<= 1;
        }
        HuffmanCodes(codes)
    }
}

/// Entropy-coded data with 0xFF byte stuffing.
struct BitWriter {
    out: Vec<u8>,
    /// Pending bits, the oldest highest; fewer than 8 between calls.
    buffer: u64,
    count: u32,
}

impl BitWriter {
    /// Append the low `length` (at most 32) bits of `value`.
    fn put(&mut self, value: u64, length: u32) {
        if length == 0 {
            return;
        }
        self.buffer = (self.buffer << length) | (value & ((1u64 << length) - 1));
        self.count += length;
        while self.count >= 8 {
            let byte = (self.buffer >> (self.count - 8)) as u8;
            self.out.push(byte);
            if byte == 0xFF {
                self.out.push(0);
            }
            self.count -= 8;
        }
        self.buffer &= (1u64 << self.count) - 1;
    }

    fn symbol(&mut self, codes: &HuffmanCodes, symbol: u8) {
        let (code, length) = codes.0[symbol as usize];
        self.put(code as u64, length as u32);
    }

    /// A value as its size category's symbol (`run << 4 | size`) followed by its bits.
    fn value(&mut self, codes: &HuffmanCodes, run: u8, value: i32) {
        let size = 32 - value.unsigned_abs().leading_zeros();
        self.symbol(codes, (run << 4) | size as u8);
        let bits = if value < 0 { value - 1 } else { value };
        self.put(bits as u32 as u64, size);
    }

    /// A block whose AC terms are all zero.
    fn flat_block(&mut self, dc: i32, previous_dc: &mut i32, (dc_codes, ac_codes): &(HuffmanCodes, HuffmanCodes)) {
        self.value(dc_codes, 0, dc - *previous_dc);
        *previous_dc = dc;
        self.symbol(ac_codes, 0x00); // end of block
    }

    fn block(
        &mut self,
        zigzag: &[i32; 64],
        previous_dc: &mut i32,
        (dc_codes, ac_codes): &(HuffmanCodes, HuffmanCodes),
    ) {
        self.value(dc_codes, 0, zigzag[0] - *previous_dc);
        *previous_dc = zigzag[0];
        let mut run = 0u8;
        for &coefficient in &zigzag[1..] {
            if coefficient == 0 {
                run += 1;
                continue;
            }
            while run >= 16 {
                self.symbol(ac_codes, 0xF0); // sixteen zeros
                run -= 16;
            }
            self.value(ac_codes, run, coefficient);
            run = 0;
        }
        if run > 0 {
            self.symbol(ac_codes, 0x00);
        }
    }

    /// Pad the last byte with 1 bits.
    fn finish(mut self) -> Vec<u8> {
        if self.count > 0 {
            let pad = 8 - self.count;
            self.put((1 << pad) - 1, pad);
        }
        self.out
    }
}

/// Natural (row-major) index of each zigzag position.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63,
];

/// T.81 Annex K.1 quantisation tables, natural order.
const LUMA_QUANT: [u16; 64] = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51,
    87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
];
const CHROMA_QUANT: [u16; 64] = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99,
];

/// T.81 Annex K.3 Huffman tables: number of codes of each length 1..16, then the symbols.
const LUMA_DC_LENGTHS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
const CHROMA_DC_LENGTHS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const LUMA_AC_LENGTHS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D];
const LUMA_AC_VALUES: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71, 0x14,
    0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09,
    0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A,
    0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65,
    0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88,
    0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9,
    0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA,
    0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA,
    0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
];
const CHROMA_AC_LENGTHS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
const CHROMA_AC_VALUES: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13, 0x22, 0x32,
    0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52, 0xF0, 0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16,
    0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39,
    0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64,
    0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86,
    0x87, 0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7,
    0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8,
    0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9,
    0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
];
