pub mod calibrate;
pub mod codec;
pub mod config;
pub mod core;
pub mod datasets;
pub mod kafka;
pub mod replay;
pub mod sample;
