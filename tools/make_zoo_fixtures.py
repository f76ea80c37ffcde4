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
import copy
import json
import os
import shutil
import statistics
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
from safetensors.torch import load_file, save_file

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
FIXTURES = {
    "zoo_sampled_gaussian": dict(
        about="model/core_gaussian_readout.yaml via vystrcilova_2024_wn_cnn.yaml: MultiSampledGaussianReadout "
        "(PointGaussianReadout, FullGaussian2d family, gauss_type full), 1x80x90 marmoset white noise, "
        "hidden [8,16], temporal [30,5], spatial [21,5]",
        experiment="vystrcilova_2024_wn_cnn",
        sessions={"01": 5, "04": 3},
        meis=[("output", "01", 0)],
        time_steps=50,
        layer_channels=(1, 1),
        seed=3,
    ),
    "zoo_karamanlis": dict(
        about="karamanlis_2024_core_readout.yaml: 1x60x80 (data_io video size), hidden [16,32,64], "
        "spatial [21,15,11], temporal [11,11,11], hidden padding (0,5,5), no pooling",
        experiment="karamanlis_2024_core_readout",
        sessions={"mouse_01_fixationmovie": 5, "mouse_02_fixationmovie": 3},
        meis=[],
        why_fewer_meis="time: one float32 MEI takes openretina about an hour on this shared 2-core machine",
        timing_iterations=1,
        time_steps=50,
        layer_channels=(1, 1),
        seed=4,
    ),
    "zoo_hoefling_high_res": dict(
        about="hoefling_2024_core_readout_high_res.yaml: 2x72x64 (green, UV), 4 layers of 16 channels, "
        "temporal [13,11,5,5], spatial [15,15,7,7], hidden padding (0,5,5), MaxPool3d (1,2,2) after layers 0 and 2",
        experiment="hoefling_2024_core_readout_high_res",
        sessions={"session_1_ventral1_20200226": 5, "session_2_ventral2_20201016": 3},
        meis=[("output", "session_1_ventral1_20200226", 0)],
        extra_meis=[("inner", "core_features_layer0", 0)],
        drop_meis=[("output", "session_1_ventral1_20200226", 0)],
        drop_why="chaotic in openretina itself (its float32 and float64 MEIs differ by 0.53 relative), so no close "
        "check of a float32 implementation; its 7 MB would double the folder. It stays the MEI of "
        "f32_frozen_parameters_check and timing",
        extra_why="the output MEI is chaotic in openretina itself (its float32 and float64 runs differ by 0.53 "
        "relative: lr 100 steps through four layers with max-pooling and the norm/range post-processing), so it "
        "cannot check a float32 implementation closely; an inner channel of the first layer is well conditioned",
        time_steps=50,
        layer_channels=(1, 1),
        seed=5,
    ),
    "zoo_goldin_meis": dict(
        about="more MEIs of ../shared/fixtures/zoo/zoo_goldin (goldin_2022_core_readout.yaml: 1x1x108x108 images, "
        "time_independent conv, readout positive false): the same checkpoint, an inner-channel MEI and an output MEI "
        "of the second session, on 20-frame stimuli (`openretina visualize --time-steps-stimulus 20`)",
        experiment="goldin_2022_core_readout",
        from_shared="zoo/zoo_goldin",
        meis=[("inner", "core_features_layer0", 1), ("output", "mouse_2_ventral2_20201016", 1)],
        time_steps=20,
        layer_channels=(1, 1),
        seed=6,
        notes=[
            "the model is ../shared/fixtures/zoo/zoo_goldin's checkpoint, copied here with its model.safetensors and "
            "hparams.json, so these references extend that fixture's",
            "20 frames instead of visualize's default 50 (its --time-steps-stimulus flag): the time_independent core "
            "treats every frame on its own and both objectives average frames 10-19, so frames 20-49 would only "
            "carry the untouched random start and treble the folder size",
        ],
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


@torch.no_grad()
def structure_weights(model, rng, probe):
    """Structured random weights (as ../shared/fixtures/README.md says): DoG spatial kernels, random sin/cos
    temporal weights, BatchNorm statistics near the real ones of a probe stimulus, readout positions spread
    over the field."""
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    for layer in model.core.features:
        conv = layer.conv
        o, i = conv.weight_spatial.shape[:2]
        k = conv.weight_spatial.shape[-1]
        spatial = np.stack([np.stack([dog_kernel(k, rng) for _ in range(i)]) for _ in range(o)])
        conv.weight_spatial.copy_(t(spatial[:, :, None] / np.sqrt(i)))
        conv.sin_weights.copy_(t(rng.standard_normal(conv.sin_weights.shape) * 0.5))
        conv.cos_weights.copy_(t(rng.standard_normal(conv.cos_weights.shape) * 0.5))
        layer.bias.bias.copy_(t(rng.normal(0.0, 0.1, layer.bias.bias.shape)))
        layer.norm.weight.copy_(t(rng.uniform(0.7, 1.3, layer.norm.weight.shape)))
        layer.norm.bias.copy_(t(rng.normal(0.0, 0.1, layer.norm.bias.shape)))
    # BatchNorm running statistics: the real ones of the probe, each jittered
    x = probe
    for layer in model.core.features:
        y = layer.conv(x)
        mean = y.mean(dim=(0, 2, 3, 4)).numpy()
        var = y.var(dim=(0, 2, 3, 4)).numpy()
        layer.norm.running_mean.copy_(t(mean + rng.normal(0, 0.1, mean.shape) * np.sqrt(var)))
        layer.norm.running_var.copy_(t(var * rng.uniform(0.7, 1.4, var.shape)))
        x = layer(x)
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


def objective_for(model, spec, layer_shapes):
    """visualize's objective for an inner channel (last 10 frames of the layer) or an output neuron (frames 10-19).
    The layer's frame count comes from the float32 model (openretina's get_output_shape_for_layer probes with a
    float32 stimulus, which the float64 model refuses)."""
    kind, a, b = spec
    if kind == "output":
        return IncreaseObjective(model, neuron_indices=b, data_key=a, response_reducer=SliceMeanReducer(0, 10, 10))
    reducer = SliceMeanReducer(0, 10, 10)
    objective = InnerNeuronVisualizationObjective(model, model.readout.readout_keys()[0], reducer)
    num_timesteps = layer_shapes[a][2]
    reducer.start = num_timesteps - reducer.length
    objective.set_layer_channel(a, b)
    return objective


def run_mei(model, spec, init, post, penalty, opt_fn, layer_shapes, iterations=10):
    stimulus = init.clone().requires_grad_(True)
    objective = objective_for(model, spec, layer_shapes)
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


def compute_mei(name, mspec, model32, model64, stimulus_shape, shapes, ref, diffs):
    """One MEI as visualize computes it, from a fresh start, in float32 and float64, into `ref` and `diffs`."""
    post, penalty, opt_fn = visualize_pieces(stimulus_shape)
    post64, penalty64, _ = visualize_pieces(stimulus_shape)
    mid = mei_id(mspec)
    init = post.process(torch.randn(stimulus_shape) * 0.1)
    t0 = time.perf_counter()
    f32, loss32, secs = run_mei(model32, mspec, init, post, penalty, opt_fn, shapes)
    f64, _, _ = run_mei(model64, mspec, init.double(), post64, penalty64, opt_fn, shapes)
    seconds = time.perf_counter() - t0
    ref[f"mei.{mid}.init"], ref[f"mei.{mid}.f32"], ref[f"mei.{mid}.f64"] = init, f32, f64
    ref[f"mei.{mid}.loss32"] = torch.from_numpy(loss32)
    diffs[f"mei.{mid}"] = rel(f32, f64)
    s = f64[0].numpy()
    for ci in range(s.shape[0]):
        temporal, spatial, _ = decompose_kernel(s[ci])
        freqs, fw = calculate_fft(temporal, FRAME_RATE_MODEL, 10.0)
        base = f"mei.{mid}.composition.c{ci}"
        ref[f"{base}.temporal"] = torch.from_numpy(np.ascontiguousarray(temporal, dtype=np.float64))
        ref[f"{base}.spatial"] = torch.from_numpy(np.ascontiguousarray(spatial, dtype=np.float64))
        ref[f"{base}.fft_freqs"] = torch.from_numpy(np.ascontiguousarray(freqs, dtype=np.float64))
        ref[f"{base}.fft_weights"] = torch.from_numpy(np.ascontiguousarray(fw, dtype=np.float64))
        ref[f"{base}.main_freq"] = torch.tensor([float(weighted_main_frequency(freqs, fw))], dtype=torch.float64)
    moved = rel(f64 - init.double(), init)
    print(f"[{name}] MEI {mid}: float32 (frozen) {secs:.1f} s, f32 vs f64 {diffs[f'mei.{mid}']:.2e}, "
          f"moved {moved:.2e} of the start, losses {loss32[0]:.4g} -> {loss32[-1]:.4g}", flush=True)
    if moved < 1e-2:  # a flat objective makes a useless reference: refuse it
        raise SystemExit(f"{name}: MEI {mid} hardly moves from its start ({moved:.1e}); change the weights or seed")
    return seconds


def add_meis(name, spec, args):
    """More MEIs on a folder made before (its committed checkpoint), appended to its references and manifest."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(spec["seed"] + 1000)
    out = os.path.join(args.out, name)
    model = load_core_readout_model(os.path.join(out, "model.ckpt"), "cpu").eval()
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    ref = load_file(os.path.join(out, "reference.safetensors"))
    shapes = manifest["visualize"]["layer_output_shapes"]
    stimulus_shape = tuple(manifest["visualize"]["stimulus_shape"])
    model32 = copy.deepcopy(model).requires_grad_(False)
    model64 = copy.deepcopy(model).double().requires_grad_(False)
    seconds = 0.0
    for mspec in spec["extra_meis"]:
        seconds += compute_mei(name, mspec, model32, model64, stimulus_shape, shapes, ref, manifest["relative_max_diff_f32_vs_f64"])
    manifest["mei_plan"]["computed"] += [list(m) for m in spec["extra_meis"]]
    manifest["mei_plan"]["added_later"] = {"meis": [list(m) for m in spec["extra_meis"]], "why": spec["extra_why"],
                                           "how": "make_zoo_fixtures.py --add-meis on the re-loaded model.ckpt"}
    manifest["meis"] = len(manifest["mei_plan"]["computed"])
    manifest["mei_seconds_openretina_f32_plus_f64"] = round(manifest["mei_seconds_openretina_f32_plus_f64"] + seconds, 2)
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(out, "reference.safetensors"))
    write_manifest(out, manifest)
    print(f"[{name}] added {len(spec['extra_meis'])} MEI(s)", flush=True)
    drop_meis(out, spec)


def drop_meis(out, spec):
    """Remove the tensors of `drop_meis` (folder size), keeping what openretina did with them in the manifest."""
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    ref = load_file(os.path.join(out, "reference.safetensors"))
    for mspec in spec.get("drop_meis", []):
        mid = mei_id(mspec)
        ref = {k: v for k, v in ref.items() if not k.startswith(f"mei.{mid}.")}
        manifest["mei_plan"]["computed"].remove(list(mspec))
        manifest["mei_plan"].setdefault("dropped", {})[f"mei.{mid}"] = {
            "relative_max_diff_f32_vs_f64": manifest["relative_max_diff_f32_vs_f64"].pop(f"mei.{mid}"),
            "why": spec["drop_why"]}
    manifest["meis"] = len(manifest["mei_plan"]["computed"])
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(out, "reference.safetensors"))
    write_manifest(out, manifest)


def make(name, spec, args):
    torch.set_num_threads(THREADS)
    out = os.path.join(args.out, name)
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(spec["seed"])
    torch.manual_seed(spec["seed"])
    lightning.seed_everything(spec["seed"], verbose=False)
    overrides = spec.get("overrides", [])
    errors, notes = {}, list(spec.get("notes", []))
    load_before = round(os.getloadavg()[0], 2)

    cfg = compose_config(args.configs, spec["experiment"], overrides)
    cfg_release = compose_config(args.configs_release, spec["experiment"], overrides)
    model_cfg = to_jsonable(OmegaConf.to_container(cfg.model, resolve=False))
    model_cfg_release = to_jsonable(OmegaConf.to_container(cfg_release.model, resolve=False))
    config_diff = {k: [model_cfg_release.get(k), model_cfg.get(k)] for k in sorted(set(model_cfg) | set(model_cfg_release)) if model_cfg.get(k) != model_cfg_release.get(k)}

    ckpt = os.path.join(out, "model.ckpt")
    shared_manifest = None
    if "from_shared" in spec:  # more references for an existing shared fixture's checkpoint
        src = os.path.join(args.shared, spec["from_shared"])
        for f in ("model.ckpt", "model.safetensors", "hparams.json"):
            shutil.copyfile(os.path.join(src, f), os.path.join(out, f))
        with open(os.path.join(src, "manifest.json")) as f:
            shared_manifest = json.load(f)
        spec = dict(spec, sessions=shared_manifest["sessions"])
        weights_only = "weights_only" in shared_manifest["checkpoint"]["kind"]
        identical = "not re-saved: the shared fixture's checkpoint"
        model = load_core_readout_model(ckpt, "cpu").eval()
    else:
        data_info = synthetic_data(cfg, spec["sessions"], rng)
        model = build(cfg, data_info)
        model.eval()
        c, _, h, w = model.hparams["in_shape"]
        probe = torch.from_numpy(rng.uniform(0, 1, (1, c, 60, h, w)).astype(np.float32))
        structure_weights(model, rng, probe)
        weights_only = spec.get("weights_only_checkpoint", True)
        train_one_step_and_save(model, cfg, data_info, ckpt, weights_only)
        loaded = load_core_readout_model(ckpt, "cpu")
        sd_a, sd_b = model.state_dict(), loaded.state_dict()
        identical = sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
        model = loaded.eval()
    c, h, w = (int(v) for v in model.data_info["input_shape"])
    print(f"[{name}] built and re-loaded ({type(model).__name__}, identical state dict: {identical})", flush=True)

    if "from_shared" not in spec:
        hp = hyper_parameters_json(model)
        sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(sd, os.path.join(out, "model.safetensors"), metadata={
            "format": "openretina-core-readout", "model_class": type(model).__name__, "hyper_parameters": json.dumps(hp)})
        with open(os.path.join(out, "hparams.json"), "w") as f:
            json.dump({"hyper_parameters": hp, "model_class": type(model).__name__}, f, indent=1, sort_keys=True)

    ref, manifest, diffs = {}, {}, {}
    keys = model.readout.readout_keys()
    model64 = copy.deepcopy(model).double().requires_grad_(False)
    # The reference MEIs run with frozen parameters: the stimulus gradient does not depend on whether torch
    # also computes weight gradients (checked bitwise against a visualize-exact run in `timing`), and those
    # weight gradients make up most of openretina's float32 MEI time at these sizes.
    model32_frozen = copy.deepcopy(model).requires_grad_(False)
    for p in model.parameters():
        p.requires_grad_(True)

    # forward passes
    tsteps = spec["time_steps"]
    x = torch.rand(1, c, tsteps, h, w)
    ref["forward.input"] = x
    manifest["forward.input"] = "uniform [0,1) stimulus, shape (1, C, T, H, W)"
    fwd_samples = []
    for key in keys:
        with torch.no_grad():
            t0 = time.perf_counter()
            y32 = model(x, data_key=key)
            fwd_samples.append(time.perf_counter() - t0)
            y64 = model64(x.double(), data_key=key)
        ref[f"forward.{key}.f32"], ref[f"forward.{key}.f64"] = y32, y64
        manifest[f"forward.{key}.f32"] = f"model(x, data_key='{key}') in float32, shape (1, T_out, neurons)"
        manifest[f"forward.{key}.f64"] = "same in float64 (the model cast to double)"
        diffs[f"forward.{key}"] = rel(y32, y64)

    # hooked layers (as visualize hooks them)
    names_all = list(InnerNeuronVisualizationObjective.hook_model(model).keys())
    layer_names = [n for n in names_all if "layer" in n and n[-1].isdigit()]
    h32 = hooked_outputs(model, x, keys[0], layer_names)
    h64 = hooked_outputs(model64, x.double(), keys[0], layer_names)
    n32, n64 = spec["layer_channels"]
    stored, layer_diffs, shapes = {}, {}, {}
    for n in layer_names:
        full = list(h32[n].shape)
        shapes[n] = [1] + full[1:]
        ref[f"layer.{n}"] = h32[n][:, :n32]
        manifest[f"layer.{n}"] = (f"float32 output of hooked module {n} for forward.input, data_key '{keys[0]}' "
                                  f"(channels 0..{n32 - 1} of {full[1]}; full shape {full})")
        if n64:
            ref[f"layer.{n}.f64"] = h64[n][:, :n64]
            manifest[f"layer.{n}.f64"] = f"same from the model cast to float64 (channels 0..{n64 - 1})"
        stored[n] = {"float32_channels": n32, "float64_channels": n64, "of": full[1]}
        layer_diffs[n] = rel(h32[n], h64[n])

    # weights and readouts
    for i, layer in enumerate(model.core.features):
        conv = layer.conv
        if hasattr(conv, "sin_weights"):
            from openretina.modules.layers.convolutions import compute_temporal_kernel

            k = compute_temporal_kernel(conv._log_speed_default, conv.sin_weights, conv.cos_weights,
                                        conv.temporal_kernel_size, conv.subsampling_factor)
            ref[f"weights.layer{i}.temporal"] = k.detach()[..., 0, 0]
            manifest[f"weights.layer{i}.temporal"] = "temporal kernel (out, in, t) from sin/cos weights, log_speed 0"
    for key in keys:
        r = model.readout[key]
        if hasattr(r, "get_mask"):
            ref[f"readout.{key}.mask"] = r.get_mask().detach()
            manifest[f"readout.{key}.mask"] = "Gaussian mask pdf (neurons, h, w), normalised to sum 1"
        else:  # PointGaussianReadout: what it computes at eval time, and what its weight figure draws
            cin, _, hh, ww = r.in_shape
            with torch.no_grad():
                grid = r.sample_grid(batch_size=1, sample=False)
                eye = torch.eye(hh * ww).view(hh * ww, 1, hh, ww)
                weights = F.grid_sample(eye, grid.expand(hh * ww, -1, -1, -1), align_corners=r.align_corners)
            ref[f"readout.{key}.mask"] = weights[:, 0, :, 0].T.reshape(r.outdims, hh, ww).contiguous()
            manifest[f"readout.{key}.mask"] = (
                "bilinear sampling weights (neurons, h, w) of the eval-time position mu (grid_sample, align_corners "
                "as configured): the readout computes sum_hw(mask * core output) . features + bias, then softplus")
            ref[f"readout.{key}.mu"] = grid[0, :, 0, :].detach()
            manifest[f"readout.{key}.mu"] = "eval-time sampling position (neurons, 2) = clamp(mu, -1, 1), (x, y) in grid_sample coordinates"
            ref[f"readout.{key}.sampling_density"] = torch.from_numpy(
                np.stack([r._neuron_sampling_map(j) for j in range(r.outdims)]).astype(np.float32))
            manifest[f"readout.{key}.sampling_density"] = (
                "the 'Sampling Density' openretina's readout weight figure draws per neuron (neurons, h, w): "
                "Gaussian of mean mu and covariance sigma sigma^T + 1e-6 I over linspace(-1,1) grids, normalised to sum 1")

    # visualize's readout weight figures (does openretina draw them? the core's are one figure per channel pair)
    try:
        import matplotlib

        matplotlib.use("Agg")
        model.readout.save_weight_visualizations(os.path.join("/tmp/zoo_weight_figures", name), "png")
    except Exception as e:  # noqa: BLE001
        errors["readout_save_weight_visualizations"] = f"{type(e).__name__}: {e}".splitlines()[0]

    # MEIs, as visualize computes them
    stimulus_shape = model.stimulus_shape(time_steps=tsteps, num_batches=1)
    post, penalty, opt_fn = visualize_pieces(stimulus_shape)
    mei_seconds = 0.0
    for mspec in spec["meis"]:
        mei_seconds += compute_mei(name, mspec, model32_frozen, model64, stimulus_shape, shapes, ref, diffs)

    layer_channels = {n: shapes[n][1] for n in layer_names}
    meis_total = sum(layer_channels.values()) + sum(model.readout[k].outdims for k in keys)
    arch = {
        "about": spec["about"],
        "conv_classes": sorted({type(layer.conv).__name__ for layer in model.core.features}),
        "convolution_type": model.hparams["core"]["convolution_type"],
        "core_children": [n for n, _ in model.core.features.named_children()],
        "core_class": type(model.core).__name__,
        "core_target": model.hparams["core"]["_target_"],
        "hidden_channels": list(model.hparams["hidden_channels"]),
        "in_shape": list(model.hparams["in_shape"]),
        "model_class": type(model).__name__,
        "n_core_layers": len(model.core.features),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "readout_class": type(model.readout).__name__,
        "readout_per_session_class": type(model.readout[keys[0]]).__name__,
    }
    manifest.update({
        "architecture": arch,
        "checkpoint": shared_manifest["checkpoint"] | {"copied_from": f"../shared/fixtures/{spec['from_shared']}"}
        if "from_shared" in spec else {
            "kind": "weights_only (no optimizer state, to keep the folder small)" if weights_only
            else "full (optimizer and loop state, as the ModelCheckpoint callback saves)",
            "lightning": "Trainer.fit one step at the config's optimizer, then Trainer.save_checkpoint",
        },
        "config": {
            "built_like": "openretina train: UnifiedCoreReadout(data_info=compute_data_info(...), **cfg.model)",
            "configs_from": f"openretina repository configs/ at commit {CONFIGS_COMMIT}",
            "experiment": spec["experiment"] + ".yaml",
            "model_config_diff_repo_head_vs_1.1.1_release": config_diff,
            "overrides": overrides,
        },
        "f64_largest_conv3d_im2col_bytes": _largest_im2col[0],
        "f64_notes": [
            "float64 runs evaluate every conv3d as the same cross-correlation through float64 FFTs (rfftn, product, "
            "irfftn, valid part): torch's CPU conv3d in double builds an im2col buffer of up to "
            f"{_largest_im2col[0]} bytes here and its input gradient takes hours; the FFT route agrees with torch's "
            "conv3d to ~1e-15 relative (forward and input gradient, checked on these kernel sizes)"],
        "f64_plain_openretina": "ok: the model cast to double runs as it is",
        "layer_channels_stored": stored,
        "layer_names": layer_names,
        "layer_relative_max_diff_f32_vs_f64": layer_diffs,
        "load_core_readout_model": f"ok ({type(model).__name__}, state dict identical: {identical})",
        "mei": "mei.<layer>.<channel>.* and mei.output.<session>.<neuron>.*: init = starting stimulus (already "
        "renormalised/clipped as visualize does; for 1 colour channel visualize applies no norm or range limit), "
        "f32 = openretina result in float32 (parameters requiring grad, exactly visualize), f64 = same procedure on "
        "the model cast to float64 (parameters frozen), loss32 = the loss optimize_stimulus computes at each of the "
        "10 SGD steps (lr 100) of the float32 run, before that step, composition.* = "
        "decompose_kernel/calculate_fft/weighted_main_frequency of the f64 MEI per colour channel (30 Hz, 10 Hz low "
        "pass, as the MEI figure)",
        "mei_plan": {"computed": [list(m) for m in spec["meis"]],
                     "why_fewer": spec.get("why_fewer_meis", "folder size cap")},
        "mei_seconds_openretina_f32_plus_f64": round(mei_seconds, 2),
        "meis": len(spec["meis"]),
        "notes": notes,
        "openretina_error": errors,
        "relative_max_diff_f32_vs_f64": diffs,
        "seed": spec["seed"],
        "sessions": dict(spec["sessions"]),
        "visualize": {
            "layer_names": layer_names,
            "layer_output_shapes": shapes,
            "meis_total": meis_total,
            "note": "visualize hooks every module and optimises every channel of the modules whose hook name "
            "contains 'layer' and ends in a digit, then every neuron of every session",
            "stimulus_shape": list(stimulus_shape),
            "time_steps_stimulus": tsteps,
        },
    })
    save_file({k: v.detach().contiguous() for k, v in ref.items()}, os.path.join(out, "reference.safetensors"))
    write_manifest(out, manifest)
    print(f"[{name}] references written, timing openretina's MEI next", flush=True)

    # timing: the first reference MEI again, exactly as visualize runs it (parameters requiring grad)
    # (where even one MEI is too slow for the session, `timing_iterations` SGD steps are timed and scaled to 10)
    samples, same = [], None
    first = spec["meis"][0] if spec["meis"] else ("output", keys[0], 0)
    iterations = spec.get("timing_iterations", 10)
    for _ in range(spec.get("timing_runs", 1)):
        init = ref[f"mei.{mei_id(first)}.init"] if spec["meis"] else post.process(torch.randn(stimulus_shape) * 0.1)
        f32_visualize, _, secs = run_mei(model, first, init, post, penalty, opt_fn, shapes, iterations)
        samples.append(secs * 10 / iterations)
        if spec["meis"] and same is None:
            same = bool(torch.equal(f32_visualize, ref[f"mei.{mei_id(first)}.f32"]))
        print(f"[{name}] openretina MEI (visualize-exact) {samples[-1]:.1f} s", flush=True)
    median = round(statistics.median(samples), 2)
    if same is not None:
        manifest["f32_frozen_parameters_check"] = {
            "bitwise_identical": same,
            "mei": f"mei.{mei_id(first)}",
            "note": "the reference f32 MEIs ran with parameters frozen; this one ran again with parameters "
            "requiring grad, exactly as visualize does, from the same init",
        }
    if iterations != 10:
        manifest["timing_estimated"] = (
            f"one MEI's time is estimated as 10/{iterations} x the time of {iterations} SGD step(s) of the MEI of "
            f"{list(first)} exactly as visualize runs it: a whole MEI was too slow for the session")
    manifest.update({
        "timing": {
            "device": "cpu",
            "threads": THREADS,
            "torch": torch.__version__,
            "openretina": openretina.__version__ if hasattr(openretina, "__version__") else "1.1.1",
            "mei_float32_samples": [round(s, 2) for s in samples],
            "mei_float32_seconds": median,
            **({"mei_float32_seconds_median_of_3": median} if len(samples) == 3 else {}),
            "forward_samples": [round(s, 3) for s in fwd_samples],
            f"forward_seconds_{tsteps}_frames": round(statistics.median(fwd_samples), 3),
            "time_steps_stimulus": tsteps,
            "load_average_1min_before_after": [load_before, round(os.getloadavg()[0], 2)],
            "mei_note": "one MEI = 10 SGD steps at lr 100 with visualize's objective, range penalty and "
            "post-processing, float32, parameters requiring grad as in visualize; samples are runs of the first "
            "reference MEI from its init; mei_float32_seconds is their median",
            "contention": "the machine has 2 cores shared with other CPU-heavy work: timings are upper bounds of "
            "an idle 2-thread run",
            "visualize_meis_total": meis_total,
            "visualize_estimated_seconds": round(median * meis_total, 1),
        },
    })
    write_manifest(out, manifest)
    print(f"[{name}] done: {sorted(os.listdir(out))}", flush=True)


def write_manifest(out, manifest):
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", required=True, help="openretina's configs/ folder (repository HEAD)")
    p.add_argument("--configs-release", required=True, help="configs/ of the release-version-1.1.1 tag, to diff")
    p.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "../../shared/fixtures"),
                   help="../shared/fixtures, for fixtures that extend a shared one")
    p.add_argument("--out", required=True, help="where the fixture folders go (tests/fixtures/zoo)")
    p.add_argument("--add-meis", action="store_true", help="append each fixture's `extra_meis` to its folder")
    p.add_argument("names", nargs="+", choices=sorted(FIXTURES))
    args = p.parse_args()
    for name in args.names:
        (add_meis if args.add_meis else make)(name, FIXTURES[name], args)


if __name__ == "__main__":
    sys.exit(main())
