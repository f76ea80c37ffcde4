//! The factorised ("Klindt") readout of one session, openretina's `FactorizedReadout`
//! (`MultiFactorizedReadout`): each neuron weights the core output in space by a free mask
//! (`mask_weights`, one value per pixel, not a parametric shape), then across channels by its feature
//! weights, adds its bias (`readout_bias`) and applies softplus. No scale.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::mask_features::{MaskFeatures, MaskReadout};
use super::Readout;
use crate::error::Result;
use crate::model::config::ReadoutConfig;
use crate::model::layer::Shape;
use crate::model::load::StateDict;
use crate::model::Float;

#[derive(Debug, Clone)]
pub struct FactorizedReadout<F> {
    pub height: usize,
    pub width: usize,
    rows: MaskFeatures<F>,
}

/// openretina's `weights_constraint` / `mask_constraint` options, which its forward applies to the
/// weights in place before every use: applying them once at load gives what its first forward
/// computes (and every later one: `abs` is idempotent and `norm` reaches its fixed point, a squared
/// norm of 1 - 1e-5, after one application to within 1e-5 relative, 1e-10 after two).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Constraints {
    mask_abs: bool,
    weights_abs: bool,
    weights_norm: bool,
}

fn constraints(rc: &ReadoutConfig) -> Result<Constraints> {
    let o = rc.options();
    let mask = o.get("mask_constraint").map(|_| o.str("mask_constraint", "")).transpose()?;
    let weights = o.get("weights_constraint").map(|_| o.str("weights_constraint", "")).transpose()?;
    let mask_abs = match mask {
        None => false,
        Some("abs") => true,
        Some(other) => bail!("hyper parameter `readout.mask_constraint` = \"{other}\" is not one of openretina's (null, \"abs\")"),
    };
    let (weights_abs, weights_norm) = match weights {
        None => (false, false),
        Some("abs") => (true, false),
        Some("norm") => (false, true),
        Some("absnorm") => (true, true),
        Some(other) => {
            bail!("hyper parameter `readout.weights_constraint` = \"{other}\" is not one of openretina's (null, \"abs\", \"norm\", \"absnorm\")")
        }
    };
    Ok(Constraints { mask_abs, weights_abs, weights_norm })
}

/// Every session's `FactorizedReadout` reading a core output of `(channels, _, height, width)`.
pub fn load_sessions<F: Float>(
    rc: &ReadoutConfig,
    sd: &mut StateDict,
    sessions: &[(String, usize)],
    [channels, _, height, width]: Shape,
) -> Result<BTreeMap<String, Arc<dyn Readout<F>>>> {
    let constraints = constraints(rc)?;
    // Without `readout_bias` openretina keeps a zero `bias` buffer and does not add it.
    let use_bias = rc.options().bool("readout_bias", false)?;
    let mut readouts = BTreeMap::new();
    for (session, n) in sessions {
        let (p, n) = (format!("readout.{session}"), *n);
        let hw = height * width;
        // Stored (pixels, neurons); kept as (neurons, pixels), one mask row per neuron.
        let stored: Vec<F> = sd.take(&format!("{p}.mask_weights"), &[hw, n])?;
        let mut masks: Vec<F> = (0..n).flat_map(|k| (0..hw).map(move |q| (q, k))).map(|(q, k)| stored[q * n + k]).collect();
        let mut features: Vec<F> = sd.take(&format!("{p}.feature_weights"), &[channels, n])?;
        let bias: Vec<F> = sd.take(&format!("{p}.bias"), &[n])?;
        let bias = if use_bias { bias } else { vec![F::zero(); n] };
        // The Laplace regulariser's filter matters for training only.
        let laplace = format!("{p}._input_weights_regularizer_spatial.laplace.filter");
        sd.skip(&laplace);
        let abs = |v: &mut [F]| v.iter_mut().for_each(|x| *x = if *x < F::zero() { -*x } else { *x });
        if constraints.mask_abs {
            abs(&mut masks);
        }
        if constraints.weights_abs {
            abs(&mut features);
        }
        if constraints.weights_norm {
            for k in 0..n {
                let norm = ((0..channels).map(|c| features[c * n + k] * features[c * n + k]).sum::<F>() + F::from_f64(1e-5)).sqrt();
                (0..channels).for_each(|c| features[c * n + k] = features[c * n + k] / norm);
            }
        }
        let rows = MaskFeatures { neurons: n, channels, pixels: hw, masks, features, scale: vec![F::one(); n], bias };
        readouts.insert(session.clone(), Arc::new(FactorizedReadout { height, width, rows }) as Arc<dyn Readout<F>>);
    }
    Ok(readouts)
}

impl<F: Float> MaskReadout for FactorizedReadout<F> {
    type F = F;
    const CLASS_NAME: &'static str = "FactorizedReadout";
    /// openretina's figure for this class draws the feature bars around 0.
    const SYMMETRIC_FEATURES: bool = true;

    fn rows(&self) -> &MaskFeatures<F> {
        &self.rows
    }

    fn mask_shape(&self) -> [usize; 2] {
        [self.height, self.width]
    }

    fn select_rows(&self, neurons: &[usize]) -> Self {
        FactorizedReadout { height: self.height, width: self.width, rows: self.rows.select(neurons) }
    }
}
