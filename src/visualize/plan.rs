//! What a `visualize` run produces: its pieces of work (MEIs, weight figures) in a fixed order, the
//! files each writes, and which shard does which. The plan is saved in the folder's state, so `--merge`
//! and later runs know what the folder holds without loading the model.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::VisualizeOptions;
use crate::error::{Error, Result};
use crate::mei::MeiTarget;
use crate::model::Model;

/// One piece of work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Item {
    /// The MEI of a core layer's channel (its figure and video).
    Inner { layer: usize, channel: usize },
    /// The MEI of a session's neuron (its figure and video).
    Output { session: String, neuron: usize },
    /// The weight figure of one (input, output) channel pair of a core layer.
    ConvWeights { layer: usize, input: usize, output: usize },
    /// The readout weight figure of one neuron.
    ReadoutWeights { session: String, neuron: usize },
}

impl Item {
    pub fn target(&self) -> Option<MeiTarget> {
        match self {
            Item::Inner { layer, channel } => Some(MeiTarget::InnerChannel { layer: *layer, channel: *channel }),
            Item::Output { session, neuron } => Some(MeiTarget::OutputNeuron { session: session.clone(), neuron: *neuron }),
            _ => None,
        }
    }

    /// The folder of an MEI's figure and video and its number in it, as openretina names them.
    pub fn mei_folder(&self) -> Option<(String, usize)> {
        match self {
            Item::Inner { layer, channel } => Some((format!("core_features_layer{layer}"), *channel)),
            Item::Output { session, neuron } => Some((format!("output_neurons/{session}"), *neuron)),
            _ => None,
        }
    }
}

/// `--shard K/N`: shard K (0-based) of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// `K/N` with 0 <= K < N, e.g. `$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT` for `--array=0-(N-1)`.
    pub fn parse(text: &str) -> Result<Shard> {
        let bad = || Error::new(format!("--shard {text}: expected K/N with 0 <= K < N, e.g. 0/4 for the first of 4 shards"));
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// Everything a run writes, derived from the model and the options.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// A hash of everything the outputs depend on; runs with the same one share a folder.
    pub fingerprint: String,
    pub model_class: String,
    pub core_layers: usize,
    pub sessions: usize,
    /// Figure file extension.
    pub ext: String,
    pub videos: bool,
    /// openretina's layout for the Hoefling ensemble (`weights_layer_<i>` at the top level).
    pub ensemble_layout: bool,
    /// MEIs first (openretina's order: inner channels layer by layer, then output neurons), then the
    /// weight figures.
    pub items: Vec<Item>,
}

pub const MEIS_FILE: &str = "meis.safetensors";
pub const SUMMARY_FILE: &str = "summary.csv";
pub const INDEX_FILE: &str = "index.html";

impl Plan {
    pub fn new(model: &Model<f32>, output_models: &[Model<f32>], targets: &[MeiTarget], opts: &VisualizeOptions) -> Plan {
        let mut items: Vec<Item> = targets
            .iter()
            .filter_map(|t| match t {
                MeiTarget::InnerChannel { layer, channel } => Some(Item::Inner { layer: *layer, channel: *channel }),
                MeiTarget::OutputNeuron { session, neuron } => Some(Item::Output { session: session.clone(), neuron: *neuron }),
                // Most discriminative stimuli are `retina mei`'s, not part of visualize's layout.
                MeiTarget::Contrastive { .. } => None,
            })
            .collect();
        if opts.weights {
            for layer in 0..model.core.n_layers() {
                let Some((inputs, outputs)) = model.core.layer_kernel(layer).and_then(|l| l.kernel_channels()) else { continue };
                for input in 0..inputs {
                    for output in 0..outputs {
                        items.push(Item::ConvWeights { layer, input, output });
                    }
                }
            }
            for (session, readout) in &model.readouts {
                for neuron in 0..readout.neurons() {
                    items.push(Item::ReadoutWeights { session: session.clone(), neuron });
                }
            }
        }
        Plan {
            fingerprint: fingerprint(model, output_models, opts),
            model_class: model.config.model_class.clone(),
            core_layers: model.core.n_layers(),
            sessions: model.readouts.len(),
            ext: opts.style.format.extension().to_string(),
            videos: opts.videos,
            ensemble_layout: opts.ensemble_layout,
            items,
        }
    }

    pub fn mei_count(&self) -> usize {
        self.items.iter().take_while(|i| i.target().is_some()).count()
    }

    /// The shard that does item `i`: MEIs and weight figures are each dealt round-robin, so every
    /// shard gets an equal share of both kinds, and the same share in every run of the same plan.
    pub fn owner(&self, i: usize, shards: usize) -> usize {
        let meis = self.mei_count();
        let ordinal = if i < meis { i } else { i - meis };
        ordinal % shards
    }

    /// The figure of an item, relative to the folder with `/`.
    pub fn figure(&self, item: &Item) -> String {
        let ext = &self.ext;
        match item {
            Item::Inner { .. } | Item::Output { .. } => {
                let (dir, index) = item.mei_folder().expect("an MEI");
                format!("{dir}/{index}.{ext}")
            }
            Item::ConvWeights { layer, input, output } => {
                let root = if self.ensemble_layout { "" } else { "weights_core/" };
                format!("{root}weights_layer_{layer}/{input}_{output}_.{ext}")
            }
            Item::ReadoutWeights { session, neuron } => format!("weights_readout/{session}/neuron_{neuron}.{ext}"),
        }
    }

    /// The video of an MEI, when videos are made.
    pub fn video(&self, item: &Item) -> Option<String> {
        let (dir, index) = item.mei_folder()?;
        self.videos.then(|| format!("{dir}/{index}.mp4"))
    }

    /// The files of one item.
    pub fn item_files(&self, item: &Item) -> impl Iterator<Item = String> {
        [Some(self.figure(item)), self.video(item)].into_iter().flatten()
    }

    /// The files made from all items together (written by the merge).
    pub fn merged_files(&self) -> Vec<&'static str> {
        let mut files = vec![SUMMARY_FILE, INDEX_FILE];
        if self.mei_count() > 0 {
            files.push(MEIS_FILE);
        }
        files
    }

    /// Every output file of the run, relative to the folder.
    pub fn outputs(&self) -> impl Iterator<Item = String> + '_ {
        self.items.iter().flat_map(|i| self.item_files(i)).chain(self.merged_files().into_iter().map(String::from))
    }
}

/// FNV-1a over formatted text, without building the text (a model's `Debug` form is large).
struct Fnv(u64);

impl std::fmt::Write for Fnv {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for b in s.bytes() {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        Ok(())
    }
}

/// A hash of everything the outputs depend on (not the shard, the batch size or the thread count: they
/// do not change a single byte).
fn fingerprint(model: &Model<f32>, output_models: &[Model<f32>], opts: &VisualizeOptions) -> String {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    let _ = write!(
        h,
        "retina {} | {model:?} | {output_models:?} | {:?} | {:?} | {:?} {:?} {:?} | {} {} {} {} {:?}",
        env!("CARGO_PKG_VERSION"),
        opts.mei,
        opts.style,
        opts.layers,
        opts.sessions,
        opts.neurons,
        opts.meis,
        opts.videos,
        opts.weights,
        opts.ensemble_layout,
        opts.output_note
    );
    format!("{:016x}", h.0)
}
