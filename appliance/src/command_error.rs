//! The error a command answers with: a stable machine-readable code, a message, and
//! the field it is about. Shared by the protocol (which puts it in a reply line) and
//! the features that refuse a command, so it sits below both.

use alloc::borrow::ToOwned;
use alloc::string::String;
use core::fmt;

use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes (serialized snake_case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not JSON (or not UTF-8).
    ParseError,
    /// JSON, but not a request: not an object, or id/cmd/args missing or mistyped.
    InvalidRequest,
    /// `cmd` names no command.
    UnknownCommand,
    /// The configuration document was refused; `field` names the offending field.
    InvalidConfig,
    /// The line exceeded `MAX_LINE_LEN`; it is discarded up to its newline.
    LineTooLong,
    /// The command needs state the appliance does not have yet (e.g. a configuration).
    NotReady,
    /// The command names something that does not exist (a peer, network or FDB entry).
    NotFound,
    /// A bug in the appliance; the request may or may not have taken effect.
    Internal,
    /// The document (announced by `apply-begin`) is larger than the appliance can hold.
    TooLarge,
    /// The appliance runs as many of these as it can (captures); stop one first.
    Busy,
}

/// The `error` member of a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// Dotted path of the offending field (`"uplink.address"`, `"id"`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: String) -> Self {
        ErrorBody {
            code,
            message,
            field: None,
        }
    }

    pub fn with_field(code: ErrorCode, message: String, field: &str) -> Self {
        ErrorBody {
            code,
            message,
            field: Some(field.to_owned()),
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}
