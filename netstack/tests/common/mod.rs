//! What the scenario tests share. Each test file uses part of it.
#![allow(dead_code)]

pub mod frames;
