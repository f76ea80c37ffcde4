//! openretina's `TemporalGaussianLowPassFilterProcessor`: each pixel's time course convolved with a
//! normalised Gaussian (zero padding, "same" size), applied after the norm/range post-processor.

use crate::model::Float;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TemporalLowPass {
    pub sigma: f64,
    pub kernel_size: usize,
}

impl TemporalLowPass {
    /// The kernel as openretina builds it, in float32: `exp(-(i - k/2)^2 / (2 sigma^2))` divided by
    /// its float32 sum. Float64 stimuli use it cast to double (as openretina's `model.double()` runs).
    pub fn kernel(&self) -> Vec<f32> {
        let half = (self.kernel_size / 2) as f32;
        let two_sigma_sq = (2.0 * self.sigma * self.sigma) as f32;
        let raw: Vec<f32> = (0..self.kernel_size)
            .map(|i| {
                let d = i as f32 - half;
                ((-(d * d) / two_sigma_sq) as f64).exp() as f32
            })
            .collect();
        let sum: f32 = raw.iter().sum();
        raw.iter().map(|v| v / sum).collect()
    }

    /// Filter `x` of shape `(channels, t, h, w)` along time, in place. Each output value is
    /// accumulated in f64 and rounded once: the kernel sums to 1 - 7e-8 in float32, so a run of
    /// pixels clipped to a bound comes out just inside it, as in openretina's conv, and not one
    /// rounding outside (where the range penalty would switch on).
    pub fn apply<F: Float>(&self, x: &mut [F], [c, t, h, w]: [usize; 4]) {
        let kernel: Vec<f64> = self.kernel().iter().map(|&v| v as f64).collect();
        // PyTorch's padding="same": k - 1 zero frames in all, the smaller half before.
        let before = (self.kernel_size - 1) / 2;
        let frame = h * w;
        let mut out = vec![0.0f64; t * frame];
        for channel in x.chunks_exact_mut(t * frame).take(c) {
            out.iter_mut().for_each(|v| *v = 0.0);
            for ti in 0..t {
                let dst = &mut out[ti * frame..(ti + 1) * frame];
                for (j, &k) in kernel.iter().enumerate() {
                    let Some(src_t) = (ti + j).checked_sub(before).filter(|&s| s < t) else { continue };
                    for (o, v) in dst.iter_mut().zip(&channel[src_t * frame..(src_t + 1) * frame]) {
                        *o += k * v.to_f64();
                    }
                }
            }
            for (v, o) in channel.iter_mut().zip(&out) {
                *v = F::from_f64(*o);
            }
        }
    }
}
