//! The overlay VTEP (placeholder while it is written).

pub mod config;
