//! `retina`: open trained openretina Core + Readout retina models in Rust and show what each of their
//! neurons computes.
//!
//! The pipeline, one module per stage:
//! - [`formats`]: model files (safetensors, Lightning checkpoints, ensemble files) and downloads;
//! - [`model`]: the Core + Readout model (conv, core, readout, loading), numerically as openretina;
//! - [`mei`]: most exciting inputs (objectives, optimiser, constraints);
//! - [`plot`]: figures and videos;
//! - [`visualize`]: the `visualize` command that ties them together.

// First, so that its `bail!` macro is in scope for the modules below.
#[macro_use]
pub mod error;

pub mod allocator;
pub mod bench;
pub mod cli;
pub mod formats;
pub mod mei;
pub mod model;
pub mod output;
pub mod plot;
pub mod rng;
pub mod tensor;
pub mod visualize;

pub use error::{Error, Result};
pub use tensor::Tensor;
