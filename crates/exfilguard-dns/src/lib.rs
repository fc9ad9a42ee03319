//! The DNS side of exfilguard: names (normalisation, registered domain), DNS messages and
//! the packet headers around them. Pure parsing: no I/O, no policy.

pub mod name;

pub use name::{DnsName, NameError, NameSplit};
