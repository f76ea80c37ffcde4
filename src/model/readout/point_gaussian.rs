//! The sampled ("point") Gaussian readout of one session, openretina's `PointGaussianReadout` (alias
//! `FullGaussian2d`, from neuralpredictors) in `MultiSampledGaussianReadout`: each neuron reads the core
//! output at one learned position by bilinear interpolation, weighs the channels with its features,
//! adds its bias, and the multi-readout applies softplus.
//!
//! In eval mode (how openretina runs MEIs and forward passes) the position is the Gaussian's mean `mu`,
//! clamped to [-1, 1], not a sample: `sigma` only shapes the weight figure. The interpolation is
//! `torch.nn.functional.grid_sample(mode="bilinear", padding_mode="zeros")` with the readout's
//! `align_corners`: corners outside the feature map read 0. As the position is fixed, the four corners
//! and their weights are computed once; the response is linear in the core output, so its gradient
//! with respect to the core output is exact (no gradient with respect to the position is needed).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{softplus, softplus_derivative, NeuronWeights, Readout, ReadoutState, SpatialMap, WeightFigure};
use crate::error::Result;
use crate::model::config::ReadoutConfig;
use crate::model::layer::Shape;
use crate::model::load::StateDict;
use crate::model::Float;
use crate::tensor::Tensor;

/// One neuron's sampling point: the four neighbouring pixels (nw, ne, sw, se, as torch sums them) and
/// their bilinear weights; `None` for a corner outside the feature map.
#[derive(Debug, Clone, Copy)]
struct Corners<F> {
    pixel: [Option<usize>; 4],
    weight: [F; 4],
}

#[derive(Debug, Clone)]
pub struct PointGaussianReadout<F> {
    channels: usize,
    height: usize,
    width: usize,
    /// `(neurons, 2)`: position `(x, y)` in [-1, 1] (x across the width), as clamped by openretina.
    mu: Vec<F>,
    /// `(neurons, 2, 2)`: the square root of each position's covariance (for the figure), expanded
    /// from `uncorrelated` / `isotropic` parameters to a full matrix.
    sigma: Vec<f64>,
    /// `(channels, neurons)`.
    features: Vec<F>,
    /// `(neurons)`: 0 without `bias`.
    bias: Vec<F>,
    corners: Vec<Corners<F>>,
}

/// The options of `MultiSampledGaussianReadout` that change what a trained readout computes; the
/// others (`init_*`, `batch_sample`, `gamma`, `reg_avg`) only matter for training.
fn check_options(rc: &ReadoutConfig) -> Result<()> {
    let o = rc.options();
    for key in ["grid_mean_predictor", "shared_features", "shared_grid", "nonlinearity_function"] {
        if o.get(key).is_some() {
            bail!("hyper parameter `readout.{key}` is not implemented for MultiSampledGaussianReadout (retina reads null only)");
        }
    }
    Ok(())
}

/// Every session's `PointGaussianReadout` reading a core output of `(channels, _, height, width)`.
pub fn load_sessions<F: Float>(
    rc: &ReadoutConfig,
    sd: &mut StateDict,
    sessions: &[(String, usize)],
    [channels, _, height, width]: Shape,
) -> Result<BTreeMap<String, Arc<dyn Readout<F>>>> {
    check_options(rc)?;
    let o = rc.options();
    let align_corners = o.bool("align_corners", true)?;
    let gauss_type = o.str("gauss_type", "full")?;
    // openretina's `PointGaussianReadout` takes these three; anything else (even its own Literal's
    // "iso") raises when the model is built.
    let sigma_per_neuron = match gauss_type {
        "full" => 4,
        "uncorrelated" => 2,
        "isotropic" => 1,
        other => bail!("hyper parameter `readout.gauss_type` = \"{other}\" is not one of openretina's (\"full\", \"uncorrelated\", \"isotropic\")"),
    };
    let mut readouts = BTreeMap::new();
    for (session, n) in sessions {
        let (p, n) = (format!("readout.{session}"), *n);
        // Eval mode clamps the stored mean in place before use.
        let mu: Vec<F> = sd.take::<F>(&format!("{p}._mu"), &[1, n, 1, 2])?.into_iter().map(|v| clamp_unit(v)).collect();
        let sigma_shape = [1, n, if sigma_per_neuron == 4 { 2 } else { 1 }, if sigma_per_neuron == 1 { 1 } else { 2 }];
        let stored_sigma: Vec<f64> = sd.take(&format!("{p}.sigma"), &sigma_shape)?;
        let sigma = (0..n)
            .flat_map(|k| {
                let s = &stored_sigma[k * sigma_per_neuron..(k + 1) * sigma_per_neuron];
                match s {
                    [a, b, c, d] => [*a, *b, *c, *d],
                    [a, d] => [*a, 0.0, 0.0, *d],
                    [a] => [*a, 0.0, 0.0, *a],
                    _ => unreachable!("sigma has 1, 2 or 4 values per neuron"),
                }
            })
            .collect();
        let features: Vec<F> = sd.take(&format!("{p}._features"), &[1, channels, 1, n])?;
        let bias_name = format!("{p}.bias");
        let bias = if o.bool("bias", sd.has(&bias_name))? { sd.take(&bias_name, &[n])? } else { vec![F::zero(); n] };
        let corners = (0..n).map(|k| bilinear_corners(mu[2 * k], mu[2 * k + 1], height, width, align_corners)).collect();
        let readout = PointGaussianReadout { channels, height, width, mu, sigma, features, bias, corners };
        readouts.insert(session.clone(), Arc::new(readout) as Arc<dyn Readout<F>>);
    }
    Ok(readouts)
}

fn clamp_unit<F: Float>(v: F) -> F {
    let one = F::one();
    if v < -one {
        -one
    } else if v > one {
        one
    } else {
        v
    }
}

/// torch's `grid_sample` for one point `(x, y)` in [-1, 1]: unnormalise to pixel coordinates, then
/// the four neighbours with weights computed as its CPU kernel does.
fn bilinear_corners<F: Float>(x: F, y: F, height: usize, width: usize, align_corners: bool) -> Corners<F> {
    let one = F::one();
    let unnormalise = |g: F, size: usize| {
        if align_corners {
            (g + one) * F::from_f64((size as f64 - 1.0) / 2.0)
        } else {
            (g + one) * F::from_f64(size as f64 / 2.0) - F::from_f64(0.5)
        }
    };
    let (ix, iy) = (unnormalise(x, width), unnormalise(y, height));
    let (x_w, y_n) = (F::from_f64(ix.to_f64().floor()), F::from_f64(iy.to_f64().floor()));
    let (w, n) = (ix - x_w, iy - y_n);
    let (e, s) = (one - w, one - n);
    let (x0, y0) = (x_w.to_f64() as i64, y_n.to_f64() as i64);
    let at = |yy: i64, xx: i64| {
        (yy >= 0 && xx >= 0 && (yy as usize) < height && (xx as usize) < width).then(|| yy as usize * width + xx as usize)
    };
    Corners { pixel: [at(y0, x0), at(y0, x0 + 1), at(y0 + 1, x0), at(y0 + 1, x0 + 1)], weight: [s * e, s * w, n * e, n * w] }
}

/// What the forward pass keeps: the pre-softplus values `(t, neurons)`.
struct Tape<F> {
    pre_activation: Vec<F>,
}

impl<F: Float> PointGaussianReadout<F> {
    fn n(&self) -> usize {
        self.bias.len()
    }
}

impl<F: Float> Readout<F> for PointGaussianReadout<F> {
    fn class_name(&self) -> &'static str {
        "PointGaussianReadout"
    }

    fn neurons(&self) -> usize {
        self.n()
    }

    fn forward(&self, core_out: &[F], [_, t, h, w]: Shape) -> (Vec<F>, ReadoutState) {
        let (n_n, c_n, hw) = (self.n(), self.channels, h * w);
        let mut pre = vec![F::zero(); t * n_n];
        for ti in 0..t {
            for (k, corners) in self.corners.iter().enumerate() {
                // sum_c features[c] * interpolated[c], channels in order, then the bias.
                let mut y = F::zero();
                for c in 0..c_n {
                    let frame = &core_out[(c * t + ti) * hw..][..hw];
                    let mut v = F::zero();
                    for (pixel, &weight) in corners.pixel.iter().zip(&corners.weight) {
                        if let Some(p) = pixel {
                            v += frame[*p] * weight;
                        }
                    }
                    y += v * self.features[c * n_n + k];
                }
                pre[ti * n_n + k] = y + self.bias[k];
            }
        }
        let out = pre.iter().map(|&x| softplus(x)).collect();
        (out, Box::new(Tape { pre_activation: pre }))
    }

    fn backward(&self, state: &ReadoutState, grad_out: &[F], [c_n, t, h, w]: Shape) -> Vec<F> {
        let tape = state.downcast_ref::<Tape<F>>().expect("the state of this readout's forward pass");
        let (n_n, hw) = (self.n(), h * w);
        let mut g_core = vec![F::zero(); c_n * t * hw];
        for ti in 0..t {
            for (k, corners) in self.corners.iter().enumerate() {
                let g = grad_out[ti * n_n + k] * softplus_derivative(tape.pre_activation[ti * n_n + k]);
                for c in 0..c_n {
                    let g_c = g * self.features[c * n_n + k];
                    let frame = &mut g_core[(c * t + ti) * hw..][..hw];
                    for (pixel, &weight) in corners.pixel.iter().zip(&corners.weight) {
                        if let Some(p) = pixel {
                            frame[*p] += g_c * weight;
                        }
                    }
                }
            }
        }
        g_core
    }

    fn select(&self, neurons: &[usize]) -> Arc<dyn Readout<F>> {
        let n_n = self.n();
        Arc::new(PointGaussianReadout {
            channels: self.channels,
            height: self.height,
            width: self.width,
            mu: neurons.iter().flat_map(|&k| [self.mu[2 * k], self.mu[2 * k + 1]]).collect(),
            sigma: neurons.iter().flat_map(|&k| self.sigma[4 * k..4 * k + 4].iter().copied()).collect(),
            features: (0..self.channels).flat_map(|c| neurons.iter().map(move |&k| self.features[c * n_n + k])).collect(),
            bias: neurons.iter().map(|&k| self.bias[k]).collect(),
            corners: neurons.iter().map(|&k| self.corners[k]).collect(),
        })
    }

    /// openretina's figure for this class: the Gaussian the position was learned with, as a density
    /// over the feature map normalised to sum 1, the position itself as a dot, and the features.
    fn neuron_weights(&self, neuron: usize) -> NeuronWeights {
        let (h, w) = (self.height, self.width);
        let mu = [self.mu[2 * neuron].to_f64(), self.mu[2 * neuron + 1].to_f64()];
        let density = sampling_density(mu, &self.sigma[4 * neuron..4 * neuron + 4], h, w);
        // Pixel coordinates of the position, as openretina marks it (align_corners=True convention).
        let position = [((mu[0] + 1.0) * (w as f64 - 1.0) / 2.0) as f32, ((mu[1] + 1.0) * (h as f64 - 1.0) / 2.0) as f32];
        NeuronWeights {
            spatial: Tensor { shape: vec![h, w], data: density.into_iter().map(|v| v as f32).collect() },
            features: (0..self.channels).map(|c| self.features[c * self.n() + neuron].to_f64() as f32).collect(),
            figure: WeightFigure { spatial: SpatialMap::SamplingDensity, position: Some(position), symmetric_features: true },
        }
    }
}

/// exp(-d^T C^+ d / 2) over a `linspace(-1, 1)` grid of the feature map, with covariance
/// `C = sigma sigma^T + 1e-6 I`, normalised to sum 1 (at least 1e-8): openretina's
/// `_neuron_sampling_map`.
fn sampling_density(mu: [f64; 2], sigma: &[f64], h: usize, w: usize) -> Vec<f64> {
    let [a, b, c, d] = [sigma[0], sigma[1], sigma[2], sigma[3]];
    // C = S S^T for S = [[a, b], [c, d]]
    let (c00, c01, c11) = (a * a + b * b + 1e-6, a * c + b * d, c * c + d * d + 1e-6);
    let det = c00 * c11 - c01 * c01;
    // A symmetric positive definite 2x2 (the 1e-6 ridge keeps it so): its pseudo-inverse is its inverse.
    let (i00, i01, i11) = (c11 / det, -c01 / det, c00 / det);
    let lin = |i: usize, n: usize| if n == 1 { -1.0 } else { -1.0 + 2.0 * i as f64 / (n - 1) as f64 };
    let mut density: Vec<f64> = (0..h * w)
        .map(|p| {
            let (dx, dy) = (lin(p % w, w) - mu[0], lin(p / w, h) - mu[1]);
            (-0.5 * (dx * dx * i00 + 2.0 * dx * dy * i01 + dy * dy * i11)).exp()
        })
        .collect();
    let total = density.iter().sum::<f64>().max(1e-8);
    density.iter_mut().for_each(|v| *v /= total);
    density
}
