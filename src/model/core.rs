//! The convolutional core: input preprocessing, then per layer conv → BatchNorm (eval) → bias → ELU
//! → optional max-pool, as openretina's `SimpleCoreWrapper` and the legacy
//! `ParametricFactorizedBatchConv3dCore`. Works on one stimulus `(channels, time, height, width)` at a
//! time; batches are parallel maps over stimuli (every op here is per-sample in eval mode).

use super::config::{Architecture, ModelConfig};
use super::conv::{ConvKernels, SeparableConv3d};
use super::Float;

/// BatchNorm3d's epsilon.
pub const BATCH_NORM_EPS: f64 = 1e-5;

#[derive(Debug, Clone)]
pub struct CoreLayer<F> {
    pub conv: SeparableConv3d<F>,
    /// BatchNorm in eval mode and the bias layer folded into `y = scale * x + shift` per channel.
    pub scale: Vec<F>,
    pub shift: Vec<F>,
    pub max_pool: bool,
}

#[derive(Debug, Clone)]
pub struct Core<F> {
    pub layers: Vec<CoreLayer<F>>,
    pub color_squashing_weights: Option<Vec<F>>,
    pub downsample: Option<[usize; 3]>,
    pub cut_first_n_frames: usize,
    /// Layers whose outputs form the core output (concatenated along channels).
    pub output_layers: Vec<usize>,
}

/// Conv kernels of every layer for one log-speed choice, computed once per forward/optimisation.
pub struct CoreKernels<F>(Vec<ConvKernels<F>>);

/// What a forward pass keeps for the backward pass and for hooks.
#[derive(Debug, Clone)]
pub struct CoreTape<F> {
    /// Shape `(channels, t, h, w)` of the conv input of each layer.
    pub layer_inputs: Vec<[usize; 4]>,
    /// Post-ELU activation before pooling, per layer (needed for the ELU derivative and pooling).
    pub activations: Vec<Vec<F>>,
    /// Shape `(channels, t, h, w)` of each activation (the conv output).
    pub activation_shapes: Vec<[usize; 4]>,
    /// Output of each layer (after pooling): openretina's `core_features_layer<i>` hooks.
    pub outputs: Vec<Vec<F>>,
    pub output_shapes: Vec<[usize; 4]>,
    /// Shape of the stimulus after squashing / downsampling.
    pub preprocessed_shape: [usize; 4],
    pub stimulus_shape: [usize; 4],
}

impl<F: Float> Core<F> {
    pub fn from_config(config: &ModelConfig, layers: Vec<CoreLayer<F>>) -> Self {
        let output_layers = match &config.architecture {
            Architecture::CoreReadout => vec![layers.len() - 1],
            Architecture::HoeflingEnsembleMember { stack } => stack.clone(),
        };
        Core {
            layers,
            color_squashing_weights: config
                .color_squashing_weights
                .as_ref()
                .map(|w| w.iter().map(|&x| F::from_f64(x)).collect()),
            downsample: config.downsample_input_kernel_size,
            cut_first_n_frames: config.cut_first_n_frames,
            output_layers,
        }
    }

    pub fn kernels(&self, session: Option<&str>) -> CoreKernels<F> {
        CoreKernels(self.layers.iter().map(|l| l.conv.kernels(l.conv.log_speed(session))).collect())
    }

    /// Run every layer on one stimulus of shape `shape` `(channels, t, h, w)`.
    pub fn forward(&self, kernels: &CoreKernels<F>, stimulus: &[F], shape: [usize; 4]) -> CoreTape<F> {
        self.forward_layers(kernels, stimulus, shape, self.layers.len())
    }

    /// Run the first `n_layers` layers only (enough for an objective on an inner layer).
    pub fn forward_layers(&self, kernels: &CoreKernels<F>, stimulus: &[F], shape: [usize; 4], n_layers: usize) -> CoreTape<F> {
        let (mut x, mut x_shape) = self.preprocess(stimulus, shape);
        let preprocessed_shape = x_shape;
        let n = self.layers.len();
        let mut tape = CoreTape {
            layer_inputs: Vec::with_capacity(n),
            activations: Vec::with_capacity(n),
            activation_shapes: Vec::with_capacity(n),
            outputs: Vec::with_capacity(n),
            output_shapes: Vec::with_capacity(n),
            preprocessed_shape,
            stimulus_shape: shape,
        };
        for (layer, k) in self.layers.iter().zip(&kernels.0).take(n_layers) {
            let [_, t, h, w] = x_shape;
            let [to, ho, wo] = layer.conv.output_shape([t, h, w]).expect("shapes checked by the config");
            let mut y = layer.conv.forward(k, &x, [t, h, w]);
            let frame = to * ho * wo;
            for (o, chunk) in y.chunks_exact_mut(frame).enumerate() {
                let (a, b) = (layer.scale[o], layer.shift[o]);
                for v in chunk {
                    *v = elu(a * *v + b);
                }
            }
            let c = layer.conv.out_channels;
            tape.layer_inputs.push(x_shape);
            let (out, out_shape) = if layer.max_pool {
                (max_pool_hw(&y, [c, to, ho, wo]), [c, to, ho / 2, wo / 2])
            } else {
                (y.clone(), [c, to, ho, wo])
            };
            tape.activations.push(y);
            tape.activation_shapes.push([c, to, ho, wo]);
            x = out.clone();
            x_shape = out_shape;
            tape.outputs.push(out);
            tape.output_shapes.push(out_shape);
        }
        tape
    }

    /// The core output (what the readout sees) from a tape: the selected layers concatenated along
    /// channels, first `cut_first_n_frames` frames dropped.
    pub fn output(&self, tape: &CoreTape<F>) -> (Vec<F>, [usize; 4]) {
        let [_, t, h, w] = tape.output_shapes[self.output_layers[0]];
        let cut = self.cut_first_n_frames;
        let frame = h * w;
        let mut out = Vec::new();
        let mut channels = 0;
        for &l in &self.output_layers {
            let c = tape.output_shapes[l][0];
            for ch in 0..c {
                out.extend_from_slice(&tape.outputs[l][(ch * t + cut) * frame..(ch + 1) * t * frame]);
            }
            channels += c;
        }
        (out, [channels, t - cut, h, w])
    }

    /// Gradient with respect to the stimulus. `layer_grads[l]`, when given, is the gradient of the
    /// objective with respect to the output of layer `l`; `output_grad` with respect to `output()`.
    pub fn backward(
        &self,
        kernels: &CoreKernels<F>,
        tape: &CoreTape<F>,
        mut layer_grads: Vec<Option<Vec<F>>>,
        output_grad: Option<&[F]>,
    ) -> Vec<F> {
        layer_grads.resize(self.layers.len(), None);
        if let Some(g) = output_grad {
            self.add_output_grad(tape, g, &mut layer_grads);
        }
        let top = layer_grads.iter().rposition(Option::is_some).expect("some gradient");
        let mut grad: Vec<F> = Vec::new();
        for l in (0..=top).rev() {
            let layer = &self.layers[l];
            // Gradient at the output of layer l: from above plus any given directly.
            match (l == top, layer_grads[l].take()) {
                (true, Some(g)) => grad = g,
                (false, Some(g)) => grad.iter_mut().zip(g).for_each(|(a, b)| *a += b),
                _ => {}
            }
            let act = &tape.activations[l];
            let mut g = if layer.max_pool {
                max_pool_hw_backward(act, tape.activation_shapes[l], &grad)
            } else {
                std::mem::take(&mut grad)
            };
            let frame = act.len() / layer.conv.out_channels;
            for (o, (gc, ac)) in g.chunks_exact_mut(frame).zip(act.chunks_exact(frame)).enumerate() {
                let a = layer.scale[o];
                for (gv, &z) in gc.iter_mut().zip(ac) {
                    *gv = *gv * elu_derivative_from_output(z) * a;
                }
            }
            let [_, t, h, w] = tape.layer_inputs[l];
            grad = layer.conv.backward(&kernels.0[l], &g, [t, h, w]);
        }
        self.preprocess_backward(&grad, tape)
    }

    fn add_output_grad(&self, tape: &CoreTape<F>, g: &[F], layer_grads: &mut [Option<Vec<F>>]) {
        let cut = self.cut_first_n_frames;
        let mut offset = 0;
        for &l in &self.output_layers {
            let [c, t, h, w] = tape.output_shapes[l];
            let frame = h * w;
            let dst = layer_grads[l].get_or_insert_with(|| vec![F::zero(); c * t * frame]);
            for ch in 0..c {
                let n = (t - cut) * frame;
                let src = &g[offset..offset + n];
                for (d, &s) in dst[(ch * t + cut) * frame..(ch + 1) * t * frame].iter_mut().zip(src) {
                    *d += s;
                }
                offset += n;
            }
        }
    }

    fn preprocess(&self, x: &[F], shape: [usize; 4]) -> (Vec<F>, [usize; 4]) {
        let [c, t, h, w] = shape;
        let (mut x, mut shape) = match &self.color_squashing_weights {
            // openretina returns single-channel input unchanged.
            Some(weights) if c > 1 => {
                let n = t * h * w;
                let mut grey = vec![F::zero(); n];
                for (ch, &wt) in weights.iter().enumerate() {
                    for (g, &v) in grey.iter_mut().zip(&x[ch * n..(ch + 1) * n]) {
                        *g += v * wt;
                    }
                }
                (grey, [1, t, h, w])
            }
            _ => (x.to_vec(), shape),
        };
        if let Some(k) = self.downsample {
            let (pooled, s) = avg_pool(&x, shape, k);
            x = pooled;
            shape = s;
        }
        (x, shape)
    }

    fn preprocess_backward(&self, grad: &[F], tape: &CoreTape<F>) -> Vec<F> {
        let [c, t, h, w] = tape.stimulus_shape;
        let squashed = self.color_squashing_weights.is_some() && (c > 1);
        let before_pool = if squashed { [1, t, h, w] } else { tape.stimulus_shape };
        let g = match self.downsample {
            Some(k) => avg_pool_backward(grad, before_pool, k),
            None => grad.to_vec(),
        };
        match (&self.color_squashing_weights, squashed) {
            (Some(weights), true) => {
                let n = t * h * w;
                let mut out = vec![F::zero(); c * n];
                for (ch, &wt) in weights.iter().enumerate() {
                    for (o, &v) in out[ch * n..(ch + 1) * n].iter_mut().zip(&g) {
                        *o = v * wt;
                    }
                }
                out
            }
            _ => g,
        }
    }
}

pub fn elu<F: Float>(x: F) -> F {
    if x > F::zero() {
        x
    } else {
        x.exp_m1()
    }
}

/// d ELU / dx written with the output z: 1 for x > 0, exp(x) = z + 1 otherwise.
pub fn elu_derivative_from_output<F: Float>(z: F) -> F {
    if z > F::zero() {
        F::one()
    } else {
        z + F::one()
    }
}

/// `MaxPool3d((1, 2, 2))`: floor mode, no padding.
fn max_pool_hw<F: Float>(x: &[F], [c, t, h, w]: [usize; 4]) -> Vec<F> {
    let (ho, wo) = (h / 2, w / 2);
    let mut out = vec![F::zero(); c * t * ho * wo];
    for ct in 0..c * t {
        let src = &x[ct * h * w..];
        for y in 0..ho {
            for xx in 0..wo {
                let mut m = src[(2 * y) * w + 2 * xx];
                for (dy, dx) in [(0, 1), (1, 0), (1, 1)] {
                    let v = src[(2 * y + dy) * w + 2 * xx + dx];
                    if v > m {
                        m = v;
                    }
                }
                out[(ct * ho + y) * wo + xx] = m;
            }
        }
    }
    out
}

/// Route each pooled gradient to the first maximum of its window (PyTorch's choice).
fn max_pool_hw_backward<F: Float>(x: &[F], [c, t, h, w]: [usize; 4], grad: &[F]) -> Vec<F> {
    let (ho, wo) = (h / 2, w / 2);
    let mut g = vec![F::zero(); x.len()];
    for ct in 0..c * t {
        let base = ct * h * w;
        for y in 0..ho {
            for xx in 0..wo {
                let mut best = base + (2 * y) * w + 2 * xx;
                for (dy, dx) in [(0, 1), (1, 0), (1, 1)] {
                    let idx = base + (2 * y + dy) * w + 2 * xx + dx;
                    if x[idx] > x[best] {
                        best = idx;
                    }
                }
                g[best] += grad[(ct * ho + y) * wo + xx];
            }
        }
    }
    g
}

/// `avg_pool3d` with kernel = stride = `k`, floor mode.
fn avg_pool<F: Float>(x: &[F], [c, t, h, w]: [usize; 4], k: [usize; 3]) -> (Vec<F>, [usize; 4]) {
    let out_shape = [c, t / k[0], h / k[1], w / k[2]];
    let [_, to, ho, wo] = out_shape;
    let inv = F::one() / F::from_f64((k[0] * k[1] * k[2]) as f64);
    let mut out = vec![F::zero(); c * to * ho * wo];
    for ch in 0..c {
        for ot in 0..to {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut sum = F::zero();
                    for dt in 0..k[0] {
                        for dy in 0..k[1] {
                            for dx in 0..k[2] {
                                sum += x[((ch * t + ot * k[0] + dt) * h + oy * k[1] + dy) * w + ox * k[2] + dx];
                            }
                        }
                    }
                    out[((ch * to + ot) * ho + oy) * wo + ox] = sum * inv;
                }
            }
        }
    }
    (out, out_shape)
}

fn avg_pool_backward<F: Float>(grad: &[F], [c, t, h, w]: [usize; 4], k: [usize; 3]) -> Vec<F> {
    let [to, ho, wo] = [t / k[0], h / k[1], w / k[2]];
    let inv = F::one() / F::from_f64((k[0] * k[1] * k[2]) as f64);
    let mut g = vec![F::zero(); c * t * h * w];
    for ch in 0..c {
        for ot in 0..to {
            for oy in 0..ho {
                for ox in 0..wo {
                    let v = grad[((ch * to + ot) * ho + oy) * wo + ox] * inv;
                    for dt in 0..k[0] {
                        for dy in 0..k[1] {
                            for dx in 0..k[2] {
                                g[((ch * t + ot * k[0] + dt) * h + oy * k[1] + dy) * w + ox * k[2] + dx] += v;
                            }
                        }
                    }
                }
            }
        }
    }
    g
}
