//! Figures and videos: what `visualize` writes for people to look at.

pub mod video;
