//! One module per command.

pub(crate) mod cache;
pub(crate) mod client;
pub(crate) mod jobqueue;
pub(crate) mod mpi;
pub(crate) mod observe;
pub(crate) mod run;
pub(crate) mod scheduler;
pub(crate) mod visualize;
pub(crate) mod worker;
