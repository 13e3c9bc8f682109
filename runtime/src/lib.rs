//! taskfarm: a task-graph runtime for HPC machines.
//!
//! * [`graph`]: the JSON graph format, validation and ordering;
//! * [`scheduler`]: the scheduler as a pure state machine plus its IO shell;
//! * [`worker`]: execution pool, value store, peer-to-peer data server;
//! * [`protocol`]: messages, framing, handshake and authentication;
//! * [`client`]: connect, submit, gather, status, shutdown;
//! * [`session`]: an asynchronous client (many computations in flight: Python's futures);
//! * [`functions`]: built-in and user-registered task functions, commands;
//! * [`schedfile`]: the scheduler file;
//! * [`local`]: the embedded one-machine cluster (`taskfarm run`);
//! * [`mpi`]: running under mpirun/srun (rank roles, batch mode, SPMD API);
//! * [`node`]: interfaces, node-local scratch, topology and core binding;
//! * [`jobqueue`]: worker jobs on SLURM/PBS/LSF/SGE, adaptive scaling.
//!
//! See docs/ARCHITECTURE.md for the code map and the scheduler's invariants.

#[doc(hidden)]
pub use tracing as __tracing;

pub mod alloc;
pub(crate) mod bufpool;
pub mod cache;
pub mod client;
pub mod dashboard;
pub(crate) mod dag;
pub mod error;
pub(crate) mod dataplane;
pub mod functions;
pub mod gate;
pub mod graph;
pub(crate) mod idmap;
pub mod jobqueue;
pub mod journal;
pub(crate) mod keys;
pub mod local;
pub mod mpi;
pub mod node;
pub mod protocol;
pub mod report;
pub mod schedfile;
pub mod seal;
pub(crate) mod store;
pub mod scheduler;
pub mod session;
pub mod shm;
pub mod status;
pub mod telemetry;
pub mod util;
pub mod value;
pub mod worker;

pub use client::{Client, ClientError, Results};
pub use error::Error;
pub use functions::{Registry, TaskContext};
pub use graph::{Graph, GraphError};
pub use value::Data;
