//! What an MEI maximises, as openretina's objectives: the mean response of one output neuron over a
//! window of time (`IncreaseObjective` + `SliceMeanReducer`), the response of one channel's centre
//! unit in an inner layer over its last frames (`InnerNeuronVisualizationObjective`), or how much
//! more one group of a session's neurons responds than the others (`ContrastiveNeuronObjective`,
//! most discriminative stimuli). `Direction::Decrease` minimises any of them instead (most
//! depressing inputs).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::layer::Reach;
use crate::model::readout::Readout;
use crate::model::{Float, Model};

/// Frames the reducer averages over (openretina's `SliceMeanReducer(length=10)`).
pub const WINDOW_LENGTH: usize = 10;
/// First output frame of the window for output neurons (`SliceMeanReducer(start=10)`).
pub const OUTPUT_WINDOW_START: usize = 10;

/// openretina's default temperature of the contrastive objective (and its MDS notebook's).
pub const DEFAULT_TEMPERATURE: f64 = 1.6;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MeiTarget {
    /// Output neuron `neuron` of a session's readout.
    OutputNeuron { session: String, neuron: usize },
    /// The centre unit of channel `channel` of core layer `layer` (`core_features_layer<layer>`).
    InnerChannel { layer: usize, channel: usize },
    /// The most discriminative stimulus of the neurons `on` of a session against each group of `off`
    /// (openretina's `ContrastiveNeuronObjective` with `data_key = session`).
    Contrastive { session: String, on: Vec<usize>, off: Vec<Vec<usize>> },
}

/// Whether the optimisation maximises the objective (MEI, MDS) or minimises it (most depressing input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    Increase,
    Decrease,
}

impl Direction {
    pub fn sign(self) -> f64 {
        match self {
            Direction::Increase => 1.0,
            Direction::Decrease => -1.0,
        }
    }
}

impl MeiTarget {
    /// A stable name: `output.<session>.<neuron>` or `core_features_layer<l>.<c>` (as the fixtures).
    pub fn id(&self) -> String {
        match self {
            MeiTarget::OutputNeuron { session, neuron } => format!("output.{session}.{neuron}"),
            MeiTarget::InnerChannel { layer, channel } => format!("core_features_layer{layer}.{channel}"),
            MeiTarget::Contrastive { session, on, off } => {
                let group = |g: &[usize]| g.iter().map(usize::to_string).collect::<Vec<_>>().join("-");
                let off: Vec<String> = off.iter().map(|g| group(g)).collect();
                format!("mds.{session}.{}_vs_{}", group(on), off.join("_vs_"))
            }
        }
    }

    /// The target an [`id`](Self::id) names, for output neurons and inner channels (`None` otherwise):
    /// reference files and MEI folders are keyed by these names.
    pub fn from_id(id: &str) -> Option<MeiTarget> {
        if let Some(rest) = id.strip_prefix("output.") {
            let (session, neuron) = rest.rsplit_once('.')?;
            return Some(MeiTarget::OutputNeuron { session: session.into(), neuron: neuron.parse().ok()? });
        }
        let (layer, channel) = id.strip_prefix("core_features_layer")?.split_once('.')?;
        Some(MeiTarget::InnerChannel { layer: layer.parse().ok()?, channel: channel.parse().ok()? })
    }
}

/// An objective bound to a model: evaluates and differentiates with respect to one stimulus.
pub struct Objective<'m, F> {
    model: &'m Model<F>,
    pub target: MeiTarget,
    session: String,
    /// For readout objectives: the session's neurons the objective reads (sorted) and a readout of
    /// just those, so that a step costs their readout rows, not the whole session's.
    neurons: Vec<usize>,
    readout: Option<Arc<dyn Readout<F>>>,
    stimulus_shape: [usize; 4],
    /// Frames of the objective's time series (output responses or layer output).
    pub series_len: usize,
    /// Window `[start, start + len)` of the series that is averaged.
    pub window: (usize, usize),
    /// The part of the stimulus the objective depends on, where it can be told exactly: gradients are
    /// computed on that part only (zero elsewhere).
    region: Region,
    /// +1 to maximise the objective, -1 to minimise it (the objective is reported with this sign).
    sign: f64,
    /// Temperature of a contrastive objective.
    temperature: f64,
}

/// A box of the stimulus: first frame, row and column, and its shape `(channels, t, h, w)`; for an
/// inner channel, where its centre unit lands in the layer output computed from the box.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Region {
    t0: usize,
    y0: usize,
    x0: usize,
    shape: [usize; 4],
    centre: Option<(usize, usize)>,
}

/// openretina's `SliceMeanReducer`: `[start, start + length)` clipped to the series, or, when `start`
/// is past the end, the first `length` frames.
pub fn slice_window(series_len: usize, start: usize, length: usize) -> (usize, usize) {
    let available = series_len as isize - start as isize;
    if available <= 0 {
        (0, length.min(series_len))
    } else {
        (start, (available as usize).min(length))
    }
}

impl<'m, F: Float> Objective<'m, F> {
    pub fn new(model: &'m Model<F>, target: MeiTarget, time_steps: usize) -> Result<Self> {
        let shape = model.config.stimulus_shape(time_steps, 1);
        let stimulus_shape = model.check_stimulus(&shape)?;
        let first_session = model.sessions().next().expect("a model has sessions").to_string();
        let (session, series_len, start) = match &target {
            MeiTarget::OutputNeuron { session, neuron } => {
                let readout = model.readout(session)?;
                let neurons = readout.neurons();
                if *neuron >= neurons {
                    return Err(Error::new(format!(
                        "neuron {neuron} does not exist: session {session} has {neurons} neurons (0 … {})",
                        neurons - 1
                    )));
                }
                let t_out = model.core_output_shape(time_steps)?[1];
                (session.clone(), t_out, OUTPUT_WINDOW_START)
            }
            MeiTarget::Contrastive { session, on, off } => {
                let readout = model.readout(session)?;
                if on.is_empty() || off.is_empty() || off.iter().any(|g| g.is_empty()) {
                    return Err(Error::new("a most discriminative stimulus needs a non-empty group of neurons and at least one non-empty group to contrast it with"));
                }
                let neurons = readout.neurons();
                if let Some(n) = on.iter().chain(off.iter().flatten()).find(|&&n| n >= neurons) {
                    return Err(Error::new(format!(
                        "neuron {n} does not exist: session {session} has {neurons} neurons (0 … {})",
                        neurons - 1
                    )));
                }
                let t_out = model.core_output_shape(time_steps)?[1];
                (session.clone(), t_out, OUTPUT_WINDOW_START)
            }
            MeiTarget::InnerChannel { layer, channel } => {
                let shapes = model.layer_output_shapes(time_steps)?;
                let s = shapes.get(*layer).ok_or_else(|| {
                    Error::new(format!("layer {layer} does not exist: the model has {} core layers", shapes.len()))
                })?;
                if *channel >= s[0] {
                    return Err(Error::new(format!(
                        "channel {channel} does not exist: core_features_layer{layer} has {} channels",
                        s[0]
                    )));
                }
                // openretina uses the first session's data key and the layer's last frames.
                (first_session, s[1], s[1].saturating_sub(WINDOW_LENGTH))
            }
        };
        let window = slice_window(series_len, start, WINDOW_LENGTH);
        let region = dependency_region(model, &target, stimulus_shape, window);
        let mut neurons = match &target {
            MeiTarget::OutputNeuron { neuron, .. } => vec![*neuron],
            MeiTarget::Contrastive { on, off, .. } => on.iter().chain(off.iter().flatten()).copied().collect(),
            MeiTarget::InnerChannel { .. } => Vec::new(),
        };
        neurons.sort_unstable();
        neurons.dedup();
        let readout = (!neurons.is_empty()).then(|| model.readouts[&session].select(&neurons));
        Ok(Objective {
            model,
            target,
            session,
            neurons,
            readout,
            stimulus_shape,
            series_len,
            window,
            region,
            sign: 1.0,
            temperature: DEFAULT_TEMPERATURE,
        })
    }

    /// Maximise or minimise; the objective and its gradient take the direction's sign.
    pub fn with_direction(mut self, direction: Direction) -> Self {
        self.sign = direction.sign();
        self
    }

    /// The temperature of a contrastive objective (ignored by the others).
    pub fn with_temperature(mut self, temperature: f64) -> Self {
        self.temperature = temperature;
        self
    }

    /// The stimulus frames `[first, last]` (inclusive) whose responses the window averages: what the
    /// MEI figure shades.
    pub fn highlighted_frames(&self) -> (usize, usize) {
        let offset = self.stimulus_shape[1] - self.series_len;
        (offset + self.window.0, offset + self.window.0 + self.window.1 - 1)
    }

    /// The stimulus shape `(channels, t, h, w)` gradients are computed on, and how many core blocks
    /// they run through (for operation counts).
    pub fn gradient_work(&self) -> ([usize; 4], usize) {
        (self.region.shape, blocks_used(self.model, &self.target))
    }

    /// The objective and its full time series (for figures and reports). An inner channel's centre
    /// unit is computed on its spatial box over all frames (the same values; see [`dependency_region`]).
    pub fn evaluate(&self, x: &[F]) -> (f64, Vec<F>) {
        let r = self.region;
        let full = self.stimulus_shape;
        let (objective, series, _) = if r.centre.is_some() {
            let shape = [full[0], full[1], r.shape[2], r.shape[3]];
            self.run(&crop(x, full, [0, r.y0, r.x0], shape), shape, self.window, r.centre, false)
        } else {
            self.run(x, full, self.window, None, false)
        };
        (objective, series)
    }

    /// The objective and its gradient with respect to the stimulus, computed on the part of the
    /// stimulus the objective depends on.
    pub fn gradient(&self, x: &[F]) -> (f64, Vec<F>) {
        let r = self.region;
        let full = self.stimulus_shape;
        if r.shape == full {
            let (objective, _, gradient) = self.run(x, full, self.window, r.centre, true);
            return (objective, gradient.expect("asked for"));
        }
        let [_, t, h, w] = r.shape;
        let sub = crop(x, full, [r.t0, r.y0, r.x0], r.shape);
        let window = (self.window.0 - r.t0, self.window.1);
        let (objective, _, g_sub) = self.run(&sub, r.shape, window, r.centre, true);
        let g_sub = g_sub.expect("asked for");
        let mut gradient = vec![F::zero(); x.len()];
        for (row, chunk) in g_sub.chunks_exact(w).enumerate() {
            let (y, rest) = (row % h, row / h);
            let (ti, ch) = (rest % t, rest / t);
            let start = ((ch * full[1] + r.t0 + ti) * full[2] + r.y0 + y) * full[3] + r.x0;
            gradient[start..start + w].copy_from_slice(chunk);
        }
        (objective, gradient)
    }

    /// Forward (and backward) on a stimulus of `shape`, averaging the series over `window`; an inner
    /// channel's unit is `centre` of the layer output (default: its middle, as openretina).
    fn run(
        &self,
        x: &[F],
        shape: [usize; 4],
        (start, len): (usize, usize),
        centre: Option<(usize, usize)>,
        with_gradient: bool,
    ) -> (f64, Vec<F>, Option<Vec<F>>) {
        // d objective / d (one frame of the window), with the direction's sign.
        let inv_len = F::from_f64(self.sign) / F::from_f64(len as f64);
        let session = Some(self.session.as_str());
        let core = &self.model.core;
        match &self.target {
            MeiTarget::OutputNeuron { .. } | MeiTarget::Contrastive { .. } => {
                let readout = self.readout.as_ref().expect("readout objectives select their neurons");
                let tape = core.forward(x, shape, session);
                let (core_out, out_shape) = core.output(&tape);
                let (responses, readout_tape) = readout.forward(&core_out, out_shape);
                let (objective, series, g_resp) = self.score_responses(&responses, out_shape[1], (start, len));
                let gradient = with_gradient.then(|| {
                    let g_core = readout.backward(&readout_tape, &g_resp, out_shape);
                    core.backward(&tape, vec![], Some(&g_core), session)
                });
                (objective, series, gradient)
            }
            MeiTarget::InnerChannel { layer, channel } => {
                let tape = core.forward_to_layer(x, shape, session, *layer);
                let (out, [c, t, h, w]) = tape.block_output(core.layer_blocks[*layer]);
                let (cy, cx) = centre.unwrap_or((h / 2, w / 2));
                let centre = cy * w + cx;
                let series: Vec<F> = (0..t).map(|ti| out[(channel * t + ti) * h * w + centre]).collect();
                let objective = self.sign * mean(&series[start..start + len]);
                let gradient = with_gradient.then(|| {
                    let mut g = vec![F::zero(); c * t * h * w];
                    for ti in start..start + len {
                        g[(channel * t + ti) * h * w + centre] = inv_len;
                    }
                    let mut layer_grads = vec![None; layer + 1];
                    layer_grads[*layer] = Some(g);
                    core.backward(&tape, layer_grads, None, session)
                });
                (objective, series, gradient)
            }
        }
    }
}

impl<F: Float> Objective<'_, F> {
    /// For a readout objective: from the session's responses `(t, neurons)`, the objective (with its
    /// sign), its time series (the neuron's trace, or the mean trace of the `on` group) and its
    /// gradient with respect to every response.
    fn score_responses(&self, responses: &[F], t: usize, (start, len): (usize, usize)) -> (f64, Vec<F>, Vec<F>) {
        // The responses are those of the selected neurons: translate the target's neuron numbers.
        let n_n = responses.len() / t;
        let local = |n: usize| self.local(n);
        let window = start..start + len;
        let mut g_resp = vec![F::zero(); responses.len()];
        match &self.target {
            MeiTarget::OutputNeuron { neuron, .. } => {
                let neuron = local(*neuron);
                let series: Vec<F> = (0..t).map(|ti| responses[ti * n_n + neuron]).collect();
                let seed = F::from_f64(self.sign) / F::from_f64(len as f64);
                for ti in window.clone() {
                    g_resp[ti * n_n + neuron] = seed;
                }
                (self.sign * mean(&series[window]), series, g_resp)
            }
            MeiTarget::Contrastive { on, off, .. } => {
                // Per neuron: mean response over the window (openretina's reducer); per group: the
                // mean of its neurons' scores; objective on/T - logsumexp([on, off...]/T) + ln(groups).
                let score = |n: usize| window.clone().map(|ti| responses[ti * n_n + local(n)].to_f64()).sum::<f64>() / len as f64;
                let group_score = |g: &[usize]| g.iter().map(|&n| score(n)).sum::<f64>() / g.len() as f64;
                let groups: Vec<&[usize]> = std::iter::once(on.as_slice()).chain(off.iter().map(Vec::as_slice)).collect();
                let temperature = self.temperature;
                let scaled: Vec<f64> = groups.iter().map(|g| group_score(g) / temperature).collect();
                let max = scaled.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                let sum_exp: f64 = scaled.iter().map(|v| (v - max).exp()).sum();
                // openretina's constant log(groups) is a float32 tensor whatever the model's precision.
                let log_groups = (groups.len() as f64).ln() as f32 as f64;
                let objective = scaled[0] - (max + sum_exp.ln()) + log_groups;
                // d objective / d group score: (1[on] - softmax) / T, spread over each group's
                // neurons and window frames.
                for (k, g) in groups.iter().enumerate() {
                    let softmax = (scaled[k] - max).exp() / sum_exp;
                    let d_group = ((k == 0) as u8 as f64 - softmax) / temperature;
                    let seed = self.sign * d_group / (g.len() * len) as f64;
                    for &n in g.iter() {
                        for ti in window.clone() {
                            g_resp[ti * n_n + local(n)] += F::from_f64(seed);
                        }
                    }
                }
                (self.sign * objective, self.group_trace(responses, t, on), g_resp)
            }
            MeiTarget::InnerChannel { .. } => unreachable!("inner channels are scored on their layer output"),
        }
    }

    /// The response traces a figure shows: for a contrastive objective the mean trace of the `on`
    /// group then of each `off` group, otherwise the objective's one series.
    pub fn group_traces(&self, x: &[F]) -> Vec<Vec<F>> {
        let MeiTarget::Contrastive { on, off, .. } = &self.target else {
            return vec![self.evaluate(x).1];
        };
        let readout = self.readout.as_ref().expect("readout objectives select their neurons");
        let tape = self.model.core.forward(x, self.stimulus_shape, Some(&self.session));
        let (core_out, out_shape) = self.model.core.output(&tape);
        let t = out_shape[1];
        let (responses, _) = readout.forward(&core_out, out_shape);
        std::iter::once(on).chain(off).map(|g| self.group_trace(&responses, t, g)).collect()
    }

    /// Where session neuron `n` is among the selected neurons' responses.
    fn local(&self, n: usize) -> usize {
        self.neurons.binary_search(&n).expect("the objective's neurons are selected")
    }

    /// The mean over `group`'s neurons (session numbers) of the selected responses `(t, neurons)`, per
    /// frame.
    fn group_trace(&self, responses: &[F], t: usize, group: &[usize]) -> Vec<F> {
        let n_n = responses.len() / t;
        (0..t)
            .map(|ti| F::from_f64(group.iter().map(|&n| responses[ti * n_n + self.local(n)].to_f64()).sum::<f64>() / group.len() as f64))
            .collect()
    }
}

/// The box of `shape` `(channels, t, h, w)` from first frame, row and column `origin` of a stimulus
/// of shape `full`.
fn crop<F: Float>(x: &[F], full: [usize; 4], [t0, y0, x0]: [usize; 3], [c, t, h, w]: [usize; 4]) -> Vec<F> {
    let mut sub = Vec::with_capacity(c * t * h * w);
    for ch in 0..c {
        for ti in 0..t {
            for y in 0..h {
                let start = ((ch * full[1] + t0 + ti) * full[2] + y0 + y) * full[3] + x0;
                sub.extend_from_slice(&x[start..start + w]);
            }
        }
    }
    sub
}

/// How many core blocks an objective runs through.
fn blocks_used<F: Float>(model: &Model<F>, target: &MeiTarget) -> usize {
    match target {
        MeiTarget::InnerChannel { layer, .. } => model.core.layer_blocks[*layer] + 1,
        _ => model.core.blocks.len(),
    }
}

/// The part of the stimulus an objective depends on, when it can be bounded exactly from each
/// layer's [`Reach`].
///
/// Time: when every layer is a stride-1 window without temporal padding (or works frame by frame),
/// the window starting at series frame `window_start` depends on stimulus frames from `window_start`
/// on (the cut of the first frames shifts series and layer frames alike).
///
/// Space, for an inner channel's centre unit when every layer below it is a stride-1 window: walking
/// down the layers, the rows a needed output reads are `[a - pad, b - 1 - pad + k)`; if they never
/// reach into the zero padding, the unit's value depends only on that box of the stimulus. Computed
/// from the box alone (each layer padding its own, smaller input), every needed value is the same,
/// and output row `o` stands for row `o + box start` of the full computation. The tests check that
/// results are identical to a full evaluation.
fn dependency_region<F: Float>(model: &Model<F>, target: &MeiTarget, full: [usize; 4], (window_start, window_len): (usize, usize)) -> Region {
    let everything = Region { t0: 0, y0: 0, x0: 0, shape: full, centre: None };
    // Each layer's reach with the input shape it sees, in order.
    let mut layers = Vec::new();
    let mut shape = full;
    for block in &model.core.blocks[..blocks_used(model, target)] {
        for layer in &block.layers {
            layers.push((layer.reach(), shape));
            let Ok(next) = layer.output_shape(shape) else { return everything };
            shape = next;
        }
    }
    let Some(reach_t) = model.core.temporal_reach(blocks_used(model, target)) else { return everything };
    // The last frame needed: the window's last series frame, shifted by the cut frames (output
    // targets), plus every layer's temporal reach.
    let cut = if matches!(target, MeiTarget::InnerChannel { .. }) { 0 } else { model.core.cut_first_n_frames };
    let t_end = (window_start + window_len + cut + reach_t).min(full[1]);
    let mut region = Region { t0: window_start, shape: [full[0], t_end - window_start, full[2], full[3]], ..everything };
    if !matches!(target, MeiTarget::InnerChannel { .. }) || layers.iter().any(|(reach, _)| !matches!(reach, Reach::Window { .. })) {
        return region;
    }
    let [_, _, out_h, out_w] = shape;
    // Per spatial axis (1 = rows, 2 = columns): the stimulus range the centre unit reads.
    let reach = |axis: usize| -> Option<(usize, usize)> {
        let centre = shape[axis + 1] / 2;
        let (mut a, mut b) = (centre, centre + 1);
        for (reach, in_shape) in layers.iter().rev() {
            let Reach::Window { kernel, padding } = reach else { return None };
            let pad = padding[axis].0;
            let (lo, hi) = (a.checked_sub(pad)?, b - 1 + kernel[axis] - pad);
            if hi > in_shape[axis + 1] {
                return None;
            }
            (a, b) = (lo, hi);
        }
        Some((a, b - a))
    };
    if let (Some((y0, h)), Some((x0, w))) = (reach(1), reach(2)) {
        region.y0 = y0;
        region.x0 = x0;
        region.shape[2] = h;
        region.shape[3] = w;
        region.centre = Some((out_h / 2 - y0, out_w / 2 - x0));
    }
    region
}

fn mean<F: Float>(v: &[F]) -> f64 {
    v.iter().map(|x| x.to_f64()).sum::<f64>() / v.len() as f64
}
