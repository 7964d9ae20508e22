//! The grid resolver at the gateway address (issue 5): grid names answered from the
//! record store, everything else forwarded upstream. Sans-I/O: the integrator feeds
//! datagrams, stream messages and time in, and sends what comes back. Nothing here
//! opens a socket, reads a clock or draws randomness that was not seeded by the caller.

pub mod records;
