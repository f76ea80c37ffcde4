//! A same-size 2-D correlation of one small frame, hand-vectorised for AVX2/FMA in float32: the state
//! convolutions of the convolutional GRU (`layers/conv_gru.rs`), 5x5 kernels on a state of a few
//! pixels (4x2 in openretina's GRU config), run once per frame and direction.
//!
//! On such a frame most taps of a pixel fall outside it (a 4x2 state: 56 of 200 pixel-tap pairs are
//! inside). A column matrix + `gemm` multiplies the zeros of the others and repacks every weight on
//! every call; here each weight vector (8 output channels) is loaded once per group of 8 pixels and
//! applied to the pixels whose tap lands inside the frame only. Products are summed over input
//! channels per tap, then the taps' sums added up: the portable code's sums in another order.

/// `out[o, t, p] += sum over c and taps (dy, dx) landing inside the frame of
/// w[(dy, dx), c, o] * x[c, t, p + (dy - k / 2, dx - k / 2)]`, for `x` `(inputs, frames, h, w)`, `out`
/// `(outputs, frames, h, w)` and weights taps-major `(k * k, inputs, outputs)`.
pub trait FrameCorrelation: Sized {
    /// Whether a fast kernel ran (else the caller runs the portable code; `out` is untouched).
    fn frame_correlate_fast(_weights: &[Self], _channels: [usize; 2], _k: usize, _x: &[Self], _shape: [usize; 3], _out: &mut [Self]) -> bool {
        false
    }
}

impl FrameCorrelation for f64 {}

impl FrameCorrelation for f32 {
    fn frame_correlate_fast(weights: &[f32], [inputs, outputs]: [usize; 2], k: usize, x: &[f32], shape: [usize; 3], out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let values = shape.iter().product::<usize>();
            let fits = outputs.is_multiple_of(8)
                && outputs > 0
                && k % 2 == 1
                && weights.len() == k * k * inputs * outputs
                && x.len() == inputs * values
                && out.len() == outputs * values;
            if fits && super::simd::avx2_fma() {
                let groups = groups(k, shape);
                // SAFETY: AVX2 and FMA are present (checked above); the sizes are checked above and
                // every index of `groups` lies inside one channel of `x` and `out`.
                unsafe { x86::frame_correlate(weights, [inputs, outputs], values, x, &groups, out) };
                return true;
            }
        }
        let _ = (weights, inputs, outputs, k, x, shape, out);
        false
    }
}

/// Up to 8 output pixels computed together, and the taps they read.
struct Group {
    /// Where each pixel lies in an output channel.
    pixels: Vec<usize>,
    taps: Vec<GroupTap>,
}

/// One tap of a group: how many of the group's pixels it lands inside the frame for, which (position
/// in the group) and the input value each reads (offset in an input channel).
struct GroupTap {
    tap: usize,
    count: usize,
    pixel: [usize; 8],
    source: [usize; 8],
}

/// The groups of a correlation over `frames` frames of `h x w`: one frame of a few pixels (the GRU's
/// state) is cut into runs of 8 pixels; several frames into one pixel position of 8 frames, so that
/// every tap serves all 8 (a pixel's taps are the same in every frame).
fn groups(k: usize, [frames, h, w]: [usize; 3]) -> Vec<Group> {
    let (p, pad) = (h * w, k / 2);
    // The input pixel tap (dy, dx) of pixel q reads, if inside the frame.
    let source = |q: usize, dy: usize, dx: usize| -> Option<usize> {
        let (iy, ix) = ((q / w + dy).checked_sub(pad)?, (q % w + dx).checked_sub(pad)?);
        (iy < h && ix < w).then_some(iy * w + ix)
    };
    let mut groups = Vec::new();
    let mut add = |members: &[(usize, usize)]| {
        // members: (frame, pixel in the frame)
        let mut taps = Vec::new();
        for dy in 0..k {
            for dx in 0..k {
                let mut t = GroupTap { tap: dy * k + dx, count: 0, pixel: [0; 8], source: [0; 8] };
                for (j, &(frame, q)) in members.iter().enumerate() {
                    if let Some(s) = source(q, dy, dx) {
                        t.pixel[t.count] = j;
                        t.source[t.count] = frame * p + s;
                        t.count += 1;
                    }
                }
                if t.count > 0 {
                    taps.push(t);
                }
            }
        }
        groups.push(Group { pixels: members.iter().map(|&(frame, q)| frame * p + q).collect(), taps });
    };
    if frames == 1 {
        let all: Vec<(usize, usize)> = (0..p).map(|q| (0, q)).collect();
        all.chunks(8).for_each(&mut add);
    } else {
        for q in 0..p {
            let column: Vec<(usize, usize)> = (0..frames).map(|t| (t, q)).collect();
            column.chunks(8).for_each(&mut add);
        }
    }
    groups
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Group, GroupTap};

    /// `values`: pixels per channel of `x` and `out` (frames x h x w).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn frame_correlate(weights: &[f32], [inputs, outputs]: [usize; 2], values: usize, x: &[f32], groups: &[Group], out: &mut [f32]) {
        for g in groups {
            for o0 in (0..outputs).step_by(8) {
                // Per pixel of the group, its 8 output channels from `o0`.
                let mut sums = [[0.0f32; 8]; 8];
                for t in &g.taps {
                    let w_tap = weights.as_ptr().add(t.tap * inputs * outputs + o0);
                    let x = x.as_ptr();
                    match t.count {
                        1 => add_tap::<1>(t, w_tap, inputs, outputs, x, values, &mut sums),
                        2 => add_tap::<2>(t, w_tap, inputs, outputs, x, values, &mut sums),
                        3 => add_tap::<3>(t, w_tap, inputs, outputs, x, values, &mut sums),
                        4 => add_tap::<4>(t, w_tap, inputs, outputs, x, values, &mut sums),
                        5 => add_tap::<5>(t, w_tap, inputs, outputs, x, values, &mut sums),
                        6 => add_tap::<6>(t, w_tap, inputs, outputs, x, values, &mut sums),
                        7 => add_tap::<7>(t, w_tap, inputs, outputs, x, values, &mut sums),
                        _ => add_tap::<8>(t, w_tap, inputs, outputs, x, values, &mut sums),
                    }
                }
                for (&pixel, sum) in g.pixels.iter().zip(&sums) {
                    for (l, &v) in sum.iter().enumerate() {
                        *out.get_unchecked_mut((o0 + l) * values + pixel) += v;
                    }
                }
            }
        }
    }

    /// One tap for its `N` pixels: the products over all input channels summed in registers, then
    /// added to each pixel's sums.
    #[inline(always)]
    unsafe fn add_tap<const N: usize>(
        t: &GroupTap,
        w_tap: *const f32,
        inputs: usize,
        outputs: usize,
        x: *const f32,
        values: usize,
        sums: &mut [[f32; 8]; 8],
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        for c in 0..inputs {
            let wv = _mm256_loadu_ps(w_tap.add(c * outputs));
            let xc = x.add(c * values);
            for i in 0..N {
                acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*xc.add(t.source[i])), wv, acc[i]);
            }
        }
        for i in 0..N {
            let s = sums[t.pixel[i]].as_mut_ptr();
            _mm256_storeu_ps(s, _mm256_add_ps(_mm256_loadu_ps(s), acc[i]));
        }
    }
}
