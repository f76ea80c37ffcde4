#!/usr/bin/env python3
"""Make the reference fixtures of tests/fixtures/zoo/ with the real openretina 1.1.1.

Never imported by the build or the tests: run it by hand in a virtual environment (see tools/README.md).
Each fixture is a model built from openretina's own hydra configs the way `openretina train` builds it
(`UnifiedCoreReadout(data_info=compute_data_info(...), **cfg.model)`), given structured random weights,
trained one Lightning step, saved with `Trainer.save_checkpoint`, re-loaded with `load_core_readout_model`,
and then probed: forward passes in float32 and float64, hooked layer outputs, and MEIs computed the way
`openretina visualize` computes them (10 SGD steps at lr 100, its objectives, range penalty and
post-processing), in float32 and on the model cast to float64. Files, tensor names and manifest keys are
those of ../shared/fixtures (see its README.md).

usage: make_zoo_fixtures.py --configs DIR --configs-release DIR --out DIR NAME [NAME ...]
"""

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

import lightning
import openretina
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf
from safetensors.torch import save_file

from openretina.data_io.base import MoviesTrainTestSplit, ResponsesTrainTestSplit, compute_data_info
from openretina.data_io.base_dataloader import DataPoint
from openretina.data_io.hoefling_2024.constants import FRAME_RATE_MODEL, STIMULUS_RANGE_CONSTRAINTS
from openretina.insilico.stimulus_optimization.objective import (
    IncreaseObjective,
    InnerNeuronVisualizationObjective,
    SliceMeanReducer,
)
from openretina.insilico.stimulus_optimization.optimization_stopper import OptimizationStopper
from openretina.insilico.stimulus_optimization.optimizer import optimize_stimulus
from openretina.insilico.stimulus_optimization.regularizer import (
    ChangeNormJointlyClipRangeSeparately,
    RangeRegularizationLoss,
)
from openretina.models.core_readout import UnifiedCoreReadout, load_core_readout_model
from openretina.utils.video_analysis import calculate_fft, decompose_kernel, weighted_main_frequency

CONFIGS_COMMIT = "0aadd97d783073ae46e04d1c5dee5fdf82448ac1"  # open-retina/open-retina HEAD used for configs/
THREADS = 2

# name -> how to make it. `sessions`: session name -> neurons (kept small: the folders must stay a few MB).
# `meis`: ("output", session, neuron) or ("inner", layer, channel), in the order they are computed.
LAYER_FRAMES = 3  # hooked layers are stored as channel 0, first frames: the arithmetic of every position

# name -> how to make it. `sessions`: session name -> neurons (few: the folders must stay about 3 MB).
# `meis`: ("output", session, neuron) or ("inner", layer, channel). Time steps: `forward_time_steps` gives ~10 output
# frames; `mei_time_steps` is visualize's 50 where output MEIs need it (they average output frames 10-19).
FIXTURES = {
    "zoo_sampled_gaussian": dict(
        about="model/core_gaussian_readout.yaml via vystrcilova_2024_wn_cnn.yaml: MultiSampledGaussianReadout "
        "(PointGaussianReadout, FullGaussian2d family, gauss_type full), 1x80x90 marmoset white noise, "
        "hidden [8,16], temporal [30,5], spatial [21,5]",
        experiment="vystrcilova_2024_wn_cnn",
        sessions={"01": 5, "04": 3},
        meis=[("output", "01", 0)],
        why_meis="folder size: one output MEI of the readout class this fixture is for",
        forward_time_steps=44,
        mei_time_steps=50,
        seed=3,
    ),
    "zoo_karamanlis": dict(
        about="karamanlis_2024_core_readout.yaml: 1x60x80 (data_io video size), hidden [16,32,64], "
        "spatial [21,15,11], temporal [11,11,11], hidden padding (0,5,5), no pooling",
        experiment="karamanlis_2024_core_readout",
        sessions={"mouse_01_fixationmovie": 5, "mouse_02_fixationmovie": 3},
        meis=[("output", "mouse_01_fixationmovie", 0)],
        why_meis="time: one openretina MEI (float32 and float64) takes most of an hour on this shared 2-core machine",
        timing_iterations=1,
        forward_time_steps=40,
        mei_time_steps=50,
        seed=4,
    ),
    "zoo_hoefling_high_res": dict(
        about="hoefling_2024_core_readout_high_res.yaml: 2x72x64 (green, UV), 4 layers of 16 channels, "
        "temporal [13,11,5,5], spatial [15,15,7,7], hidden padding (0,5,5), MaxPool3d (1,2,2) after layers 0 and 2",
        experiment="hoefling_2024_core_readout_high_res",
        sessions={"session_1_ventral1_20200226": 5, "session_2_ventral2_20201016": 3},
        meis=[("inner", "core_features_layer0", 0)],
        why_meis="its output MEIs are chaotic in openretina itself (session 1 neuron 0: float32 and float64 differ by "
        "0.53 relative: lr 100 steps through four layers with max-pooling and the norm/range post-processing), so "
        "they cannot check a float32 implementation closely; an inner channel of the first layer is well conditioned "
        "and needs only 31 frames (its objective averages the last 10 of the layer's 19 output frames; the whole model, "
        "which the objective runs, needs 31)",
        timing_mei=("output", "session_1_ventral1_20200226", 0),
        timing_time_steps=50,
        forward_time_steps=35,
        mei_time_steps=31,
        seed=5,
    ),
    "zoo_gru_separable": dict(
        about="GRU_core_readout.yaml (ConvGRUCore) with convolution_type separable (TorchSTSeparableConv3D), "
        "use_gru true and use_projections true, small: 2x18x16 (Hoefling low res), hidden [3,4,4], temporal [5,3,3], "
        "spatial [11,5,5], hidden padding as openretina builds it (layer 1 none, layer 2 by 2 in both stages of the "
        "separable conv, so it grows to 8x6), GRU 4 channels with 3x3 kernels",
        experiment="hoefling_2024_core_readout_low_res",
        overrides=["model=GRU_core_readout", "model.core.convolution_type=separable", "model.hidden_channels=[3,4,4]",
                   "model.core.temporal_kernel_sizes=[5,3,3]", "model.core.spatial_kernel_sizes=[11,5,5]",
                   "model.core.use_gru=true", "model.core.gru_kwargs.rec_channels=4", "model.core.gru_kwargs.input_kern=3",
                   "model.core.gru_kwargs.rec_kern=3"],
        sessions={"session_1_ventral1_20200226": 3, "session_2_ventral2_20201016": 2},
        meis=[("output", "session_1_ventral1_20200226", 0)],
        why_meis="one output MEI runs through every block (three separable layers, the projection, the GRU) and the "
        "readout; 30 frames give the 22 output frames whose frames 10-19 the objective averages",
        forward_time_steps=30,
        mei_time_steps=30,
        forward_f32=True,
        full_layers=True,
        extra_hooks=["core_features_projection", "core_features_gru"],
        seed=7,
    ),
    # The same small GRU core with the other two convolution types openretina's ConvGRUCore can build.
    "zoo_gru_full": dict(
        about="GRU_core_readout.yaml (ConvGRUCore) with convolution_type full (TorchFullConv3D), use_gru true and "
        "use_projections true, small: 2x18x16 (Hoefling low res), hidden [3,4,4], temporal [5,3,3], spatial [11,5,5], "
        "hidden padding as openretina builds it (layer 1 none, layer 2 by 2 in space: stays 4x2), GRU 4 channels with "
        "3x3 kernels",
        experiment="hoefling_2024_core_readout_low_res",
        overrides=["model=GRU_core_readout", "model.core.convolution_type=full", "model.hidden_channels=[3,4,4]",
                   "model.core.temporal_kernel_sizes=[5,3,3]", "model.core.spatial_kernel_sizes=[11,5,5]",
                   "model.core.use_gru=true", "model.core.gru_kwargs.rec_channels=4", "model.core.gru_kwargs.input_kern=3",
                   "model.core.gru_kwargs.rec_kern=3"],
        sessions={"session_1_ventral1_20200226": 3, "session_2_ventral2_20201016": 2},
        meis=[("output", "session_1_ventral1_20200226", 0)],
        why_meis="one output MEI runs through every block (three full conv layers, the projection, the GRU) and the "
        "readout; 30 frames give the 22 output frames whose frames 10-19 the objective averages",
        forward_time_steps=30,
        mei_time_steps=30,
        forward_f32=True,
        full_layers=True,
        extra_hooks=["core_features_projection", "core_features_gru"],
        seed=8,
    ),
    "zoo_gru_time_independent": dict(
        about="GRU_core_readout.yaml (ConvGRUCore) with convolution_type time_independent (TimeIndependentConv3D, "
        "which ignores temporal_kernel_sizes: every frame on its own), use_gru true and use_projections true, small: "
        "2x18x16 (Hoefling low res), hidden [3,4,4], spatial [11,5,5], hidden padding as openretina builds it, "
        "GRU 4 channels with 3x3 kernels (the only block that mixes frames)",
        experiment="hoefling_2024_core_readout_low_res",
        overrides=["model=GRU_core_readout", "model.core.convolution_type=time_independent",
                   "model.hidden_channels=[3,4,4]", "model.core.temporal_kernel_sizes=[5,3,3]",
                   "model.core.spatial_kernel_sizes=[11,5,5]", "model.core.use_gru=true",
                   "model.core.gru_kwargs.rec_channels=4", "model.core.gru_kwargs.input_kern=3",
                   "model.core.gru_kwargs.rec_kern=3"],
        sessions={"session_1_ventral1_20200226": 3, "session_2_ventral2_20201016": 2},
        meis=[("output", "session_1_ventral1_20200226", 0)],
        why_meis="one output MEI runs through every block (three time-independent layers, the projection, the GRU) and "
        "the readout; the core keeps all 30 frames, the objective averages output frames 10-19",
        forward_time_steps=30,
        mei_time_steps=30,
        forward_f32=True,
        full_layers=True,
        extra_hooks=["core_features_projection", "core_features_gru"],
        seed=9,
    ),
    "zoo_goldin_meis": dict(
        about="more MEIs of ../shared/fixtures/zoo/zoo_goldin (goldin_2022_core_readout.yaml: 1x1x108x108 images, "
        "time_independent conv, readout positive false): its checkpoint, an inner-channel MEI and an output MEI "
        "of the second session, on 20-frame stimuli (`openretina visualize --time-steps-stimulus 20`)",
        experiment="goldin_2022_core_readout",
        model_from="zoo/zoo_goldin",
        meis=[("inner", "core_features_layer0", 1), ("output", "mouse_2_ventral2_20201016", 1)],
        why_meis="more MEIs of zoo_goldin, whose folder holds one output MEI; 20 frames instead of visualize's "
        "default 50: the time_independent core treats every frame on its own and both objectives average frames "
        "10-19, so frames 20-49 would only carry the untouched random start",
        forward_time_steps=10,
        mei_time_steps=20,
        seed=6,
    ),
}


# ---------------------------------------------------------------- float64 convolutions
_conv3d = F.conv3d
_largest_im2col = [0]


def _conv3d_f64_fft(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch's CPU conv3d in float64 (slow_conv3d) builds an im2col buffer of (in*kt*kh*kw) x outputs, several GB
    at these sizes, and its input gradient scatters it back one kernel offset at a time: a float64 MEI takes
    hours. The float64 runs therefore evaluate the same cross-correlation through float64 FFTs (agrees with
    torch's conv3d to ~1e-15 relative, gradients included). float32 never comes here: it runs as openretina
    runs it."""
    if isinstance(padding, int):
        padding = (padding,) * 3
    plain = stride in (1, (1, 1, 1)) and dilation in (1, (1, 1, 1)) and groups == 1 and not isinstance(padding, str)
    if x.dtype != torch.float64 or not plain:
        return _conv3d(x, weight, bias, stride, padding, dilation, groups)
    pt, ph, pw = padding
    x = F.pad(x, (pw, pw, ph, ph, pt, pt))
    kt, kh, kw = weight.shape[2:]
    size = tuple(x.shape[2:])
    outputs = (size[0] - kt + 1) * (size[1] - kh + 1) * (size[2] - kw + 1)
    _largest_im2col[0] = max(_largest_im2col[0], weight[0].numel() * outputs * 8)
    xf = torch.fft.rfftn(x, s=size, dim=(2, 3, 4))
    kf = torch.fft.rfftn(weight.flip(2, 3, 4), s=size, dim=(2, 3, 4))
    y = torch.fft.irfftn(torch.einsum("nithw,oithw->nothw", xf, kf), s=size, dim=(2, 3, 4))
    y = y[:, :, kt - 1 :, kh - 1 :, kw - 1 :].contiguous()
    return y if bias is None else y + bias.view(1, -1, 1, 1, 1)


F.conv3d = _conv3d_f64_fft
torch.nn.functional.conv3d = _conv3d_f64_fft


# ---------------------------------------------------------------- building the model as `openretina train` does
def compose_config(configs_dir, experiment, overrides):
    os.environ.setdefault("OPENRETINA_CACHE_DIRECTORY", "/tmp/openretina_cache")
    with initialize_config_dir(config_dir=os.path.abspath(configs_dir), version_base="1.3"):
        return compose(config_name=experiment, overrides=list(overrides))


def synthetic_data(cfg, sessions, rng):
    """Random movies and responses of the config's shapes, so compute_data_info fills data_info as for real data."""
    c, t, h, w = (int(v) for v in cfg.model.in_shape)
    movies, responses = {}, {}
    for name, n in sessions.items():
        movies[name] = MoviesTrainTestSplit(
            train=rng.standard_normal((c, t, h, w)).astype(np.float32),
            test=rng.standard_normal((c, t, h, w)).astype(np.float32),
            norm_mean=0.0,
            norm_std=1.0,
        )
        responses[name] = ResponsesTrainTestSplit(
            train=rng.gamma(2.0, 0.5, (n, t)).astype(np.float32), test=rng.gamma(2.0, 0.5, (n, t)).astype(np.float32)
        )
    partial_info = cfg.data_io.get("data_info")
    partial_info = OmegaConf.to_container(partial_info, resolve=True) if partial_info is not None else None
    return compute_data_info(responses, movies, partial_data_info=partial_info)


def build(cfg, data_info):
    cfg.model.n_neurons_dict = data_info["n_neurons_dict"]
    return UnifiedCoreReadout(data_info=data_info, **cfg.model)


def dog_kernel(k, rng):
    """Difference of Gaussians centred near the middle, random widths and sign, unit L2 norm. The surround nearly
    balances the centre (as in retinal receptive fields), so a layer's response hardly depends on the mean
    brightness: the uniform [0, 1) forward stimulus and visualize's zero-mean MEI start both drive the model."""
    yy, xx = np.mgrid[0:k, 0:k] - (k - 1) / 2 - rng.uniform(-0.15, 0.15, 2)[:, None, None] * k
    r2 = xx**2 + yy**2
    s1 = rng.uniform(0.08, 0.2) * k
    s2 = s1 * rng.uniform(1.8, 3.0)
    centre, surround = np.exp(-r2 / (2 * s1**2)), np.exp(-r2 / (2 * s2**2))
    g = centre - rng.uniform(0.85, 1.0) * centre.sum() / surround.sum() * surround
    g *= rng.choice([-1.0, 1.0])
    return g / np.linalg.norm(g)


def structure_conv(conv, rng, t):
    """DoG spatial kernels over the input channels, random temporal weights, for each conv class."""
    kind = type(conv).__name__
    if kind == "STSeparableBatchConv3d":
        o, i, _, k, _ = conv.weight_spatial.shape
        conv.weight_spatial.copy_(t(np.stack([np.stack([dog_kernel(k, rng) for _ in range(i)]) for _ in range(o)])[:, :, None] / np.sqrt(i)))
        conv.sin_weights.copy_(t(rng.standard_normal(conv.sin_weights.shape) * 0.5))
        conv.cos_weights.copy_(t(rng.standard_normal(conv.cos_weights.shape) * 0.5))
        return
    if kind == "TorchSTSeparableConv3D":
        space, time_conv = conv.space_conv, conv.time_conv
    else:  # TorchFullConv3D, TimeIndependentConv3D: one Conv3d, spatial DoG times a random temporal profile
        space, time_conv = conv.conv, None
    o, i, kt, k, _ = space.weight.shape
    spatial = np.stack([np.stack([dog_kernel(k, rng) for _ in range(i)]) for _ in range(o)])[:, :, None] / np.sqrt(i)
    profile = rng.standard_normal((o, i, kt, 1, 1)) / np.sqrt(kt)
    space.weight.copy_(t(spatial * profile))
    if time_conv is not None:
        o2, _, kt2, _, _ = time_conv.weight.shape
        time_conv.weight.copy_(t(rng.standard_normal(time_conv.weight.shape) / np.sqrt(o2 * kt2)
                                 + np.eye(o2)[:, :, None, None, None] * rng.uniform(0.5, 1.0, (o2, 1, 1, 1, 1))))


@torch.no_grad()
def structure_weights(model, rng, probe):
    """Structured random weights (as ../shared/fixtures/README.md says): DoG spatial kernels, random temporal
    weights, BatchNorm statistics near the real ones of a probe stimulus, readout positions spread over the field;
    ConvGRUCore's projection near the identity and its GRU gates random at a moderate gain."""
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    children = list(model.core.features.named_children())
    for name, layer in children:
        if name == "projection":
            w = layer[0].conv.weight
            c = w.shape[0]
            w.copy_(t(np.eye(c)[:, :, None, None, None] * rng.uniform(0.6, 1.0, (c, 1, 1, 1, 1))
                      + rng.normal(0, 0.2 / np.sqrt(c), w.shape)))
            continue
        if name == "gru":
            for conv in layer.gru.children():
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(t(rng.standard_normal(conv.weight.shape) * 1.5 / np.sqrt(fan_in)))
                conv.bias.copy_(t(rng.normal(0.0, 0.2, conv.bias.shape)))
            continue
        structure_conv(layer.conv, rng, t)
        if hasattr(layer, "bias"):
            layer.bias.bias.copy_(t(rng.normal(0.0, 0.1, layer.bias.bias.shape)))
        layer.norm.weight.copy_(t(rng.uniform(0.7, 1.3, layer.norm.weight.shape)))
        layer.norm.bias.copy_(t(rng.normal(0.0, 0.1, layer.norm.bias.shape)))
    # BatchNorm running statistics: the real ones of the probe, each jittered
    x = probe
    for name, layer in children:
        if hasattr(layer, "norm"):
            y = layer.conv(x)
            mean = y.mean(dim=(0, 2, 3, 4)).numpy()
            var = y.var(dim=(0, 2, 3, 4)).numpy()
            layer.norm.running_mean.copy_(t(mean + rng.normal(0, 0.1, mean.shape) * np.sqrt(var)))
            layer.norm.running_var.copy_(t(var * rng.uniform(0.7, 1.4, var.shape)))
        x = layer((x, None)) if name == "gru" else layer(x)
    for name in model.readout.readout_keys():
        r = model.readout[name]
        n = r.outdims
        if hasattr(r, "_mu"):  # PointGaussianReadout: sampling positions in [-1, 1]
            r._mu.copy_(t(rng.uniform(-0.75, 0.75, r._mu.shape)))
            r.sigma.copy_(t(rng.uniform(-0.15, 0.15, r.sigma.shape)))
            c = r._features.shape[1]
            r._features.copy_(t(rng.standard_normal(r._features.shape) / np.sqrt(c)))
        else:  # GaussianMaskReadout
            r.mask_mean.copy_(t(rng.uniform(-0.75, 0.75, (n, 2)) / r.gaussian_mean_scale))
            sd = rng.uniform(0.08, 0.25, n)
            r.mask_log_var.copy_(t(np.log(sd**2) / r.gaussian_var_scale))
            c = r.features.shape[1]
            f = rng.standard_normal(r.features.shape) / np.sqrt(c)
            r.features.copy_(t(np.abs(f) if r.positive else f))
            if isinstance(r.scale_param, torch.nn.Parameter):
                r.scale_param.copy_(t(rng.uniform(0.5, 1.5, n)))
        if r.bias is not None:
            r.bias.copy_(t(rng.normal(0.0, 0.2, n)))


def train_one_step_and_save(model, cfg, data_info, path, weights_only):
    """One Lightning step at the config's optimizer (and gradient clipping), then Trainer.save_checkpoint."""
    c, t, h, w = model.hparams["in_shape"]
    key = next(iter(data_info["n_neurons_dict"]))
    model.eval()  # the shape probe must not move BatchNorm statistics; Trainer.fit switches to train mode
    with torch.no_grad():
        t_in = min(t, 60)
        x = torch.randn(1, c, t_in, h, w)
        t_out = model(x, data_key=key).shape[1]
    batch = (key, DataPoint(x, torch.rand(1, t_out, data_info["n_neurons_dict"][key])))

    class OneBatch:  # the role of openretina's LongCycler: yields (session, DataPoint)
        def __iter__(self):
            yield batch

        def __len__(self):
            return 1

    clip = cfg.trainer.get("gradient_clip_val")
    trainer = lightning.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        gradient_clip_val=clip,
        default_root_dir="/tmp/zoo_fixture_trainer",
    )
    model.train()  # as a freshly built model is (Lightning no longer switches modules to train mode itself)
    trainer.fit(model, train_dataloaders=OneBatch(), val_dataloaders=OneBatch())
    trainer.save_checkpoint(path, weights_only=weights_only)


# ---------------------------------------------------------------- serialising
def to_jsonable(v):
    if isinstance(v, (DictConfig, ListConfig)):
        return to_jsonable(OmegaConf.to_container(v, resolve=True))
    if isinstance(v, dict):
        return {str(k): to_jsonable(x) for k, x in v.items() if not isinstance(x, torch.nn.Module)}
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x) for x in v]
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def hyper_parameters_json(model):
    return {k: to_jsonable(v) for k, v in sorted(model.hparams.items()) if not isinstance(v, torch.nn.Module)}


# ---------------------------------------------------------------- references
def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), np.finfo(float).tiny))


class LossRecorder(OptimizationStopper):
    """visualize's stopper (max 10 iterations), recording the loss optimize_stimulus passes each iteration."""

    def __init__(self, iterations=10):
        super().__init__(max_iterations=iterations)
        self.losses = []

    def early_stop(self, loss):
        self.losses.append(loss)
        return False


def visualize_pieces(stimulus_shape):
    """The post-processor, range penalty and optimiser of `openretina visualize`."""
    if stimulus_shape[1] == 2:
        min_max = [
            (STIMULUS_RANGE_CONSTRAINTS["x_min_green"], STIMULUS_RANGE_CONSTRAINTS["x_max_green"]),
            (STIMULUS_RANGE_CONSTRAINTS["x_min_uv"], STIMULUS_RANGE_CONSTRAINTS["x_max_uv"]),
        ]
        norm = float(STIMULUS_RANGE_CONSTRAINTS["norm"])
    else:
        min_max, norm = [(None, None)], None
    post = ChangeNormJointlyClipRangeSeparately(min_max_values=min_max, norm=norm)
    penalty = RangeRegularizationLoss(min_max_values=min_max, max_norm=norm, factor=0.1)
    return post, penalty, partial(torch.optim.SGD, lr=100.0)


def objective_for(model, spec, shapes):
    """visualize's objective for an inner channel (last 10 frames of the layer) or an output neuron (frames 10-19).
    The layer's frame count comes from the float32 model (openretina's get_output_shape_for_layer probes with a
    float32 stimulus, which the float64 model refuses)."""
    kind, a, b = spec
    if kind == "output":
        return IncreaseObjective(model, neuron_indices=b, data_key=a, response_reducer=SliceMeanReducer(0, 10, 10))
    reducer = SliceMeanReducer(0, 10, 10)
    objective = InnerNeuronVisualizationObjective(model, model.readout.readout_keys()[0], reducer)
    num_timesteps = shapes[a][2]
    reducer.start = num_timesteps - reducer.length
    objective.set_layer_channel(a, b)
    return objective


def run_mei(model, spec, init, post, penalty, opt_fn, shapes, iterations=10):
    stimulus = init.clone().requires_grad_(True)
    objective = objective_for(model, spec, shapes)
    stopper = LossRecorder(iterations)
    t0 = time.perf_counter()
    optimize_stimulus(stimulus, opt_fn, objective, stopper, stimulus_regularization_loss=penalty, stimulus_postprocessor=post)
    seconds = time.perf_counter() - t0
    if hasattr(objective, "features_dict"):
        for hook in objective.features_dict.values():
            hook.close()
    return stimulus.detach(), np.array(stopper.losses), seconds


def mei_id(spec):
    kind, a, b = spec
    return f"output.{a}.{b}" if kind == "output" else f"{a}.{b}"


def hooked_outputs(model, x, key, names):
    objective = InnerNeuronVisualizationObjective(model, key, SliceMeanReducer(0, 0, 1))
    with torch.no_grad():
        objective.model_forward(x)
    out = {n: objective.features_dict[n].module_output_tensor.detach().clone() for n in names}
    for hook in objective.features_dict.values():
        hook.close()
    return out


def layer_shapes(model, stimulus_shape):
    """Output shape of every hooked layer for a stimulus of this shape (batch 1), as openretina's
    get_output_shape_for_layer finds it: a float32 forward pass."""
    names = hooked_layer_names(model)
    x = torch.zeros(stimulus_shape)
    return {n: list(t.shape) for n, t in hooked_outputs(model, x, model.readout.readout_keys()[0], names).items()}


def hooked_layer_names(model):
    """The modules visualize optimises: hook names containing 'layer' and ending in a digit."""
    names = list(InnerNeuronVisualizationObjective.hook_model(copy.deepcopy(model)).keys())
    return [n for n in names if "layer" in n and n[-1].isdigit()]


@contextlib.contextmanager
def float64_default(model):
    """ConvGRUCell makes its zero start state with torch.zeros in the default dtype, which a model cast to float64
    cannot take ("Input type (float) and bias type (double)"): float64 runs of a model with a GRU make float64 the
    default dtype meanwhile."""
    old = torch.get_default_dtype()
    if any(type(m).__name__ == "ConvGRUCell" for m in model.modules()):
        torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def compute_mei(name, mspec, model32, model64, stimulus_shape, ref, diffs):
    """One MEI as visualize computes it, float32 and float64 from the same start, into `ref` and `diffs`.
    The start is visualize's (0.1 x standard normal, then its post-processing) with the noise rounded to float16
    first, so that for one colour channel (no post-processing) it is stored exactly in half the bytes. The float64
    result is stored rounded to float32 (6e-8 relative, far below the per-MEI bar of 2e-4); the float32 result
    only as its difference to it. Returns the start, the float32 MEI and the seconds both took."""
    post, penalty, opt_fn = visualize_pieces(stimulus_shape)
    post64, penalty64, _ = visualize_pieces(stimulus_shape)
    shapes = layer_shapes(model32, stimulus_shape) if mspec[0] == "inner" else {}
    mid = mei_id(mspec)
    init = post.process((torch.randn(stimulus_shape) * 0.1).half().float())
    t0 = time.perf_counter()
    f32, loss32, secs = run_mei(model32, mspec, init, post, penalty, opt_fn, shapes)
    with float64_default(model64):
        f64, _, _ = run_mei(model64, mspec, init.double(), post64, penalty64, opt_fn, shapes)
    seconds = time.perf_counter() - t0
    exact_half = torch.equal(init.half().float(), init)
    ref[f"mei.{mid}.init"] = init.half() if exact_half else init
    ref[f"mei.{mid}.f64"] = f64.float()
    ref[f"mei.{mid}.loss32"] = torch.from_numpy(loss32)
    diffs[f"mei.{mid}"] = rel(f32, f64)
    moved = rel(f64 - init.double(), init)
    print(f"[{name}] MEI {mid}: float32 (frozen) {secs:.1f} s, f32 vs f64 {diffs[f'mei.{mid}']:.2e}, "
          f"moved {moved:.2e} of the start, losses {loss32[0]:.4g} -> {loss32[-1]:.4g}", flush=True)
    if moved < 1e-2:  # a flat objective makes a useless reference: refuse it
        raise SystemExit(f"{name}: MEI {mid} hardly moves from its start ({moved:.1e}); change the weights or seed")
    return init, f32, seconds


def readout_references(model, ref, about):
    """PointGaussianReadout: the eval-time position and the density its weight figure draws (tests read both)."""
    for key in model.readout.readout_keys():
        r = model.readout[key]
        if not hasattr(r, "_mu"):
            continue
        with torch.no_grad():
            grid = r.sample_grid(batch_size=1, sample=False)
        ref[f"readout.{key}.mu"] = grid[0, :, 0, :].detach().clone()
        about[f"readout.{key}.mu"] = "eval-time sampling position (neurons, 2) = clamp(mu, -1, 1), (x, y) in grid_sample coordinates"
        ref[f"readout.{key}.sampling_density"] = torch.from_numpy(
            np.stack([r._neuron_sampling_map(j) for j in range(r.outdims)]).astype(np.float32))
        about[f"readout.{key}.sampling_density"] = (
            "the 'Sampling Density' openretina's readout weight figure draws per neuron (neurons, h, w): Gaussian of "
            "mean mu and covariance sigma sigma^T + 1e-6 I over linspace(-1,1) grids, normalised to sum 1")


def write_references(name, spec, model, out, manifest):
    """What the tests read, each reference stored once: forward responses and hooked layers (float64, layers as a
    prefix), readout extras, and the MEIs of `spec['meis']`. Returns id -> (start, float32 MEI), for the timing."""
    torch.manual_seed(spec["seed"] + 1000)
    keys = model.readout.readout_keys()
    model32 = copy.deepcopy(model).requires_grad_(False)
    # The reference MEIs run with frozen parameters: the stimulus gradient does not depend on whether torch also
    # computes weight gradients (the timing run checks it bitwise), and those make most of openretina's MEI time.
    model64 = copy.deepcopy(model).double().requires_grad_(False)
    c, h, w = (int(v) for v in model.data_info["input_shape"])
    ref, about, diffs = {}, {}, {}
    x = torch.rand(1, c, spec["forward_time_steps"], h, w).half().float()
    ref["forward.input"] = x.half()
    about["forward.input"] = "uniform [0,1) stimulus rounded to float16 (stored as F16, exactly), shape (1, C, T, H, W)"
    fwd_samples = []
    for key in keys:
        with torch.no_grad():
            t0 = time.perf_counter()
            y32 = model32(x, data_key=key)
            fwd_samples.append(time.perf_counter() - t0)
            with float64_default(model64):
                y64 = model64(x.double(), data_key=key)
        ref[f"forward.{key}.f64"] = y64
        if spec.get("forward_f32"):
            ref[f"forward.{key}.f32"] = y32
            about[f"forward.{key}.f32"] = f"model(x, data_key='{key}') in float32, shape (1, T_out, neurons)"
        about[f"forward.{key}.f64"] = f"model(x, data_key='{key}') on the model cast to float64, shape (1, T_out, neurons)"
        diffs[f"forward.{key}"] = rel(y32, y64)
    names = hooked_layer_names(model) + spec.get("extra_hooks", [])
    h32 = hooked_outputs(model32, x, keys[0], names)
    with float64_default(model64):
        h64 = hooked_outputs(model64, x.double(), keys[0], names)
    layer_diffs = {n: rel(h32[n], h64[n]) for n in names}
    for n in names:
        if spec.get("full_layers"):  # a small model: every value
            ref[f"layer.{n}.f64"] = h64[n].contiguous()
            about[f"layer.{n}.f64"] = f"float64 output of hooked module {n} for forward.input, data_key '{keys[0]}'"
            continue
        ref[f"layer.{n}.f64"] = h64[n][:, :1, :LAYER_FRAMES].contiguous()
        about[f"layer.{n}.f64"] = (f"float64 output of hooked module {n} for forward.input, data_key '{keys[0]}': channel 0, "
                                   f"frames 0..{LAYER_FRAMES - 1} of {list(h64[n].shape)}")
    readout_references(model, ref, about)
    mei_shape = model.stimulus_shape(time_steps=spec["mei_time_steps"], num_batches=1)
    f32_meis, mei_seconds = {}, 0.0
    for mspec in spec["meis"]:
        init, f32, secs = compute_mei(name, mspec, model32, model64, mei_shape, ref, diffs)
        f32_meis[mei_id(mspec)] = (init, f32)
        mei_seconds += secs
    save_file({k: v.detach().contiguous() for k, v in ref.items()}, os.path.join(out, "reference.safetensors"))
    manifest.update(about)
    manifest.update({
        "f64_largest_conv3d_im2col_bytes": _largest_im2col[0],
        "f64_notes": [
            "float64 runs evaluate every conv3d as the same cross-correlation through float64 FFTs (rfftn, product, "
            "irfftn, valid part): torch's CPU conv3d in double builds an im2col buffer of up to "
            f"{_largest_im2col[0]} bytes here and its input gradient takes hours; the FFT route agrees with torch's "
            "conv3d to ~1e-15 relative (forward and input gradient, checked on these kernel sizes)"],
        "layer_names": names,
        "layer_relative_max_diff_f32_vs_f64": layer_diffs,
        "mei": "mei.<layer>.<channel>.* and mei.output.<session>.<neuron>.*: init = starting stimulus (visualize's "
        "0.1 x standard normal with the noise rounded to float16, then visualize's renormalisation/clipping, which "
        "for 1 colour channel does nothing: stored as F16 where exact), f64 = the MEI of the model cast to float64 "
        "(10 SGD steps at lr 100, visualize's objective, range penalty and post-processing), stored rounded to "
        "float32; loss32 = the loss optimize_stimulus computes at each step of the float32 run, before that step. "
        "The float32 MEI itself is not stored: relative_max_diff_f32_vs_f64 holds its difference to f64",
        "mei_plan": {"computed": [list(m) for m in spec["meis"]], "time_steps_stimulus": spec["mei_time_steps"],
                     "why": spec["why_meis"]},
        "mei_seconds_openretina_f32_plus_f64": round(mei_seconds, 2),
        "meis": len(spec["meis"]),
        "relative_max_diff_f32_vs_f64": diffs,
        "storage": "each reference once: forward responses and layer prefixes in float64 (tiny; tests compare "
        "float64 models to 1e-12), MEIs rounded to float32, inputs in float16 where exact; nothing the tests do "
        "not read (no float32 duplicates, masks, temporal kernels or MEI compositions: ../shared/fixtures checks "
        "those)",
    })
    manifest.setdefault("timing", {})["forward_samples_f32"] = [round(s, 3) for s in fwd_samples]
    write_manifest(out, manifest)
    return f32_meis


def time_visualize_mei(name, spec, model, out, manifest, f32_meis):
    """openretina's seconds for one MEI exactly as visualize runs it (parameters requiring grad), on `timing_mei`
    or the first reference MEI; where a whole MEI is too slow, `timing_iterations` steps scaled to 10."""
    keys = model.readout.readout_keys()
    first = tuple(spec.get("timing_mei") or (spec["meis"][0] if spec["meis"] else ("output", keys[0], 0)))
    shape = model.stimulus_shape(time_steps=spec.get("timing_time_steps", spec["mei_time_steps"]), num_batches=1)
    post, penalty, opt_fn = visualize_pieces(shape)
    iterations = spec.get("timing_iterations", 10)
    init = f32_meis[mei_id(first)][0] if mei_id(first) in f32_meis else post.process(torch.randn(shape) * 0.1)
    t0 = time.perf_counter()
    f32, _, secs = run_mei(model, first, init, post, penalty, opt_fn, layer_shapes(model, shape), iterations)
    seconds = round(secs * 10 / iterations, 2)
    timing = manifest["timing"]
    timing.update({"device": "cpu", "threads": THREADS, "torch": torch.__version__, "openretina": "1.1.1",
                   "mei_float32_seconds": seconds, "mei": list(first), "time_steps_stimulus": shape[2],
                   "load_average_1min_after": round(os.getloadavg()[0], 2),
                   "mei_note": "one MEI = 10 SGD steps at lr 100 with visualize's objective, range penalty and "
                   "post-processing, float32, parameters requiring grad as in visualize",
                   "contention": "2 cores shared with other CPU-heavy work: an upper bound of an idle 2-thread run"})
    if iterations != 10:
        timing["estimated"] = f"10/{iterations} x the time of {iterations} SGD step(s): a whole MEI was too slow"
    if mei_id(first) in f32_meis and iterations == 10:
        timing["f32_frozen_parameters_check_bitwise_identical"] = bool(torch.equal(f32, f32_meis[mei_id(first)][1]))
    write_manifest(out, manifest)
    print(f"[{name}] openretina MEI (visualize-exact) {seconds:.1f} s ({time.perf_counter() - t0:.0f} s)", flush=True)


def make(name, spec, args):
    """Build the model as `openretina train` does, save and re-load it, then its references and timing."""
    out = os.path.join(args.out, name)
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(spec["seed"])
    torch.manual_seed(spec["seed"])
    lightning.seed_everything(spec["seed"], verbose=False)
    overrides = spec.get("overrides", [])
    cfg = compose_config(args.configs, spec["experiment"], overrides)
    cfg_release = compose_config(args.configs_release, spec["experiment"], overrides)
    model_cfg = to_jsonable(OmegaConf.to_container(cfg.model, resolve=False))
    model_cfg_release = to_jsonable(OmegaConf.to_container(cfg_release.model, resolve=False))
    config_diff = {k: [model_cfg_release.get(k), model_cfg.get(k)] for k in sorted(set(model_cfg) | set(model_cfg_release))
                   if model_cfg.get(k) != model_cfg_release.get(k)}
    ckpt = os.path.join(out, "model.ckpt")
    data_info = synthetic_data(cfg, spec["sessions"], rng)
    model = build(cfg, data_info).eval()
    c, _, h, w = model.hparams["in_shape"]
    structure_weights(model, rng, torch.from_numpy(rng.uniform(0, 1, (1, c, 60, h, w)).astype(np.float32)))
    train_one_step_and_save(model, cfg, data_info, ckpt, weights_only=True)
    loaded = load_core_readout_model(ckpt, "cpu")
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    identical = sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    model = loaded.eval()
    hp = hyper_parameters_json(model)
    with open(os.path.join(out, "hparams.json"), "w") as f:
        json.dump({"hyper_parameters": hp, "model_class": type(model).__name__}, f, indent=1, sort_keys=True)
    errors = {}
    try:  # does openretina draw the readout's weight figures?
        import matplotlib

        matplotlib.use("Agg")
        model.readout.save_weight_visualizations(os.path.join("/tmp/zoo_weight_figures", name), "png")
    except Exception as e:  # noqa: BLE001
        errors["readout_save_weight_visualizations"] = f"{type(e).__name__}: {e}".splitlines()[0]
    keys = model.readout.readout_keys()
    shapes = layer_shapes(model, model.stimulus_shape(time_steps=50, num_batches=1))
    manifest = {
        "architecture": {
            "about": spec["about"],
            "conv_classes": sorted({type(layer.conv).__name__ for layer in model.core.features if hasattr(layer, "conv")}),
            "convolution_type": model.hparams["core"]["convolution_type"],
            "core_class": type(model.core).__name__,
            "core_target": model.hparams["core"]["_target_"],
            "hidden_channels": list(model.hparams["hidden_channels"]),
            "in_shape": list(model.hparams["in_shape"]),
            "model_class": type(model).__name__,
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "readout_class": type(model.readout).__name__,
            "readout_per_session_class": type(model.readout[keys[0]]).__name__,
        },
        "checkpoint": {"kind": "weights_only (no optimizer state, to keep the folder small)",
                       "lightning": "Trainer.fit one step at the config's optimizer, then Trainer.save_checkpoint"},
        "config": {
            "built_like": "openretina train: UnifiedCoreReadout(data_info=compute_data_info(...), **cfg.model)",
            "configs_from": f"openretina repository configs/ at commit {CONFIGS_COMMIT}",
            "experiment": spec["experiment"] + ".yaml",
            "model_config_diff_repo_head_vs_1.1.1_release": config_diff,
            "overrides": overrides,
        },
        "load_core_readout_model": f"ok ({type(model).__name__}, state dict identical: {identical})",
        "openretina_error": errors,
        "seed": spec["seed"],
        "sessions": dict(spec["sessions"]),
        "visualize": {"layer_output_shapes": shapes, "time_steps_stimulus": 50,
                      "meis_total": sum(s[1] for s in shapes.values()) + sum(model.readout[k].outdims for k in keys),
                      "note": "visualize hooks every module and optimises every channel of the modules whose hook "
                      "name contains 'layer' and ends in a digit, then every neuron of every session"},
    }
    print(f"[{name}] built and re-loaded (identical state dict: {identical})", flush=True)
    f32_meis = write_references(name, spec, model, out, manifest)
    time_visualize_mei(name, spec, model, out, manifest, f32_meis)


def references_only(name, spec, args):
    """Rewrite a folder's references on its committed checkpoint (or, for `model_from`, the shared one), keeping
    the manifest's description of the model, its config and openretina's timing."""
    out = os.path.join(args.out, name)
    with open(os.path.join(out, "manifest.json")) as f:
        old = json.load(f)
    keep = ("architecture", "checkpoint", "config", "f32_frozen_parameters_check", "load_core_readout_model",
            "model_file", "notes", "openretina_error", "seed", "sessions", "timing", "timing_estimated", "visualize")
    manifest = {k: old[k] for k in keep if k in old}
    if "model_from" in spec:  # the shared fixture's own checkpoint, not a copy of it
        manifest["model_file"] = f"../../../../../shared/fixtures/{spec['model_from']}/model.ckpt"
        manifest["checkpoint"] = {"model_file": f"model_file: ../shared/fixtures/{spec['model_from']}/model.ckpt "
                                  "relative to the crate (this folder holds no model)"}
    model_file = os.path.normpath(os.path.join(out, manifest.get("model_file", "model.ckpt")))
    model = load_core_readout_model(model_file, "cpu").eval()
    print(f"[{name}] re-loaded {model_file}", flush=True)
    write_references(name, spec, model, out, manifest)


def write_manifest(out, manifest):
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", help="openretina's configs/ folder (repository HEAD); needed to build models")
    p.add_argument("--configs-release", help="configs/ of the release-version-1.1.1 tag, to diff")
    p.add_argument("--out", required=True, help="where the fixture folders go (tests/fixtures/zoo)")
    p.add_argument("--references-only", action="store_true",
                   help="keep each folder's checkpoint and rewrite its references (and its manifest's reference part)")
    p.add_argument("names", nargs="+", choices=sorted(FIXTURES))
    args = p.parse_args()
    torch.set_num_threads(THREADS)
    for name in args.names:
        spec = FIXTURES[name]
        (references_only if args.references_only or "model_from" in spec else make)(name, spec, args)


if __name__ == "__main__":
    sys.exit(main())
