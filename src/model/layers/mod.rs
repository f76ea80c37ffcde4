//! The core's layer kinds, one file each (forward, input gradient, shape, reach, figure weights).
//! `registry.rs` says which openretina class or option builds which.

pub mod avg_pool;
pub mod batch_norm;
pub mod color_squash;
pub mod conv_gru;
pub mod elu;
pub mod max_pool;
pub mod pointwise;
pub mod st_separable;
pub mod conv3d;
pub mod torch_separable;
