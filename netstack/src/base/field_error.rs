//! The error of a config list whose entry was refused, named by the entry's place
//! (`publish[2].host_port`). Only the value: the checks live with what they check.

use alloc::string::String;
use core::fmt;

/// A refused entry of a list, named by its place: `publish[2].host_port: ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, e.g. `publish[2].host_port`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl core::error::Error for FieldError {}
