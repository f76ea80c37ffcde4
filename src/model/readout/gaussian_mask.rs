//! The Gaussian mask readout of one session (`GaussianMaskReadout`, and the legacy `SpatialXFeature3d`
//! which computes the same): each neuron weights the core output in space by a normalised 2D Gaussian,
//! then across channels by its feature weights, then applies scale, bias and softplus.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::mask_features::{MaskFeatures, MaskReadout};
use super::{nan_to_num, Readout};
use crate::error::Result;
use crate::model::config::ReadoutConfig;
use crate::model::layer::Shape;
use crate::model::load::StateDict;
use crate::model::Float;

#[derive(Debug, Clone)]
pub struct GaussianReadout<F> {
    pub height: usize,
    pub width: usize,
    /// `(neurons, 2)`, in grid units before `gaussian_mean_scale`.
    pub mask_mean: Vec<F>,
    /// `(neurons)`, before `gaussian_var_scale`.
    pub mask_log_var: Vec<F>,
    /// `(neurons, height, width, 2)`: the stored `grid` buffer.
    pub grid: Vec<F>,
    pub gaussian_mean_scale: F,
    pub gaussian_var_scale: F,
    /// Masks (from `get_mask()`, refreshed by `update_masks`), features, scale and bias.
    rows: MaskFeatures<F>,
}

/// `{prefix}.*` of one session's `GaussianMaskReadout` (or legacy `SpatialXFeature3d`, `legacy`:
/// its scale is `scale`, not `scale_param`) reading a core output of `(channels, _, height, width)`.
pub fn load<F: Float>(
    rc: &ReadoutConfig,
    sd: &mut StateDict,
    prefix: &str,
    neurons: usize,
    [channels, _, height, width]: Shape,
    legacy: bool,
) -> Result<Arc<dyn Readout<F>>> {
    let (p, n) = (prefix, neurons);
    let mut features: Vec<F> = sd.take(&format!("{p}.features"), &[1, channels, 1, n])?;
    if rc.positive {
        features.iter_mut().for_each(|f| *f = if *f < F::zero() { F::zero() } else { *f });
    }
    let scale_name = if legacy { format!("{p}.scale") } else { format!("{p}.scale_param") };
    let scale = if rc.scale || (!legacy && sd.has(&scale_name)) { sd.take(&scale_name, &[n])? } else { vec![F::one(); n] };
    let bias =
        if rc.bias || (!legacy && sd.has(&format!("{p}.bias"))) { sd.take(&format!("{p}.bias"), &[n])? } else { vec![F::zero(); n] };
    Ok(Arc::new(GaussianReadout::new(
        channels,
        height,
        width,
        sd.take(&format!("{p}.mask_mean"), &[n, 2])?,
        sd.take(&format!("{p}.mask_log_var"), &[n])?,
        sd.take(&format!("{p}.grid"), &[n, height, width, 2])?,
        F::from_f64(rc.gaussian_mean_scale),
        F::from_f64(rc.gaussian_var_scale),
        features,
        scale,
        bias,
    )))
}

/// Every session's `GaussianMaskReadout` (`MultiGaussianMaskReadout`).
pub fn load_sessions<F: Float>(
    rc: &ReadoutConfig,
    sd: &mut StateDict,
    sessions: &[(String, usize)],
    core_out: Shape,
) -> Result<BTreeMap<String, Arc<dyn Readout<F>>>> {
    sessions.iter().map(|(s, n)| Ok((s.clone(), load(rc, sd, &format!("readout.{s}"), *n, core_out, false)?))).collect()
}

/// Every session's legacy `SpatialXFeature3d` readout (Hoefling 2024 ensemble members).
pub fn load_sessions_legacy<F: Float>(
    rc: &ReadoutConfig,
    sd: &mut StateDict,
    sessions: &[(String, usize)],
    core_out: Shape,
) -> Result<BTreeMap<String, Arc<dyn Readout<F>>>> {
    sessions.iter().map(|(s, n)| Ok((s.clone(), load(rc, sd, &format!("readout.{s}"), *n, core_out, true)?))).collect()
}

impl<F: Float> GaussianReadout<F> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        channels: usize,
        height: usize,
        width: usize,
        mask_mean: Vec<F>,
        mask_log_var: Vec<F>,
        grid: Vec<F>,
        gaussian_mean_scale: F,
        gaussian_var_scale: F,
        features: Vec<F>,
        scale: Vec<F>,
        bias: Vec<F>,
    ) -> Self {
        let rows = MaskFeatures { neurons: bias.len(), channels, pixels: height * width, masks: Vec::new(), features, scale, bias };
        let mut r = GaussianReadout { height, width, mask_mean, mask_log_var, grid, gaussian_mean_scale, gaussian_var_scale, rows };
        r.update_masks();
        r
    }

    /// The masks `(neurons, height * width)`.
    pub fn masks(&self) -> &[F] {
        &self.rows.masks
    }

    /// Move every mask mean to `target` (openretina's `Center`), then recompute the masks.
    pub fn center(&mut self, target: [F; 2]) {
        for m in self.mask_mean.chunks_exact_mut(2) {
            m.copy_from_slice(&target);
        }
        self.update_masks();
    }

    /// openretina's `get_mask`: a Gaussian pdf on the grid, normalised to sum 1 per neuron.
    fn update_masks(&mut self) {
        let (neurons, hw) = (self.rows.neurons, self.height * self.width);
        let clamp = |x: F, lo: F, hi: F| if x < lo { lo } else if x > hi { hi } else { x };
        let (c20, half, eps) = (F::from_f64(20.0), F::from_f64(0.5), F::from_f64(1e-8));
        let mut masks = vec![F::zero(); neurons * hw];
        for n in 0..neurons {
            let var = clamp(self.mask_log_var[n] * self.gaussian_var_scale, -c20, c20).exp();
            let mean = [self.mask_mean[2 * n] * self.gaussian_mean_scale, self.mask_mean[2 * n + 1] * self.gaussian_mean_scale];
            let mask = &mut masks[n * hw..(n + 1) * hw];
            for (p, m) in mask.iter_mut().enumerate() {
                let g = &self.grid[(n * hw + p) * 2..][..2];
                let (d0, d1) = (g[0] - mean[0], g[1] - mean[1]);
                let dist = (d0 * d0 + d1 * d1) / (var + eps);
                let dist = if dist > c20 { c20 } else { dist };
                *m = (-half * dist).exp();
            }
            // Summed in float64: a sequential float32 sum over thousands of pixels (2016 on the
            // Karamanlis size) is off by ~1e-5 and scales every response of the neuron by that
            // (torch sums pairwise); in float64 the total is exact to float32's precision.
            let total = F::from_f64(mask.iter().map(|m| m.to_f64()).sum::<f64>());
            for m in mask.iter_mut() {
                *m = nan_to_num(*m / total);
            }
        }
        self.rows.masks = masks;
    }
}

impl<F: Float> MaskReadout for GaussianReadout<F> {
    type F = F;
    const CLASS_NAME: &'static str = "GaussianMaskReadout";
    const SYMMETRIC_FEATURES: bool = false;

    fn rows(&self) -> &MaskFeatures<F> {
        &self.rows
    }

    fn mask_shape(&self) -> [usize; 2] {
        [self.height, self.width]
    }

    fn select_rows(&self, neurons: &[usize]) -> Self {
        let hw2 = self.height * self.width * 2;
        GaussianReadout {
            height: self.height,
            width: self.width,
            mask_mean: neurons.iter().flat_map(|&n| [self.mask_mean[2 * n], self.mask_mean[2 * n + 1]]).collect(),
            mask_log_var: neurons.iter().map(|&n| self.mask_log_var[n]).collect(),
            grid: neurons.iter().flat_map(|&n| self.grid[n * hw2..(n + 1) * hw2].iter().copied()).collect(),
            gaussian_mean_scale: self.gaussian_mean_scale,
            gaussian_var_scale: self.gaussian_var_scale,
            rows: self.rows.select(neurons),
        }
    }

    fn recentered(&self, target: [f64; 2]) -> Option<Self> {
        let mut r = self.clone();
        r.center(target.map(F::from_f64));
        Some(r)
    }
}
