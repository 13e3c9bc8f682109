//! The scheduler: a pure state machine ([`state`]) and the thin IO shell
//! around it ([`server`]).

pub(crate) mod ids;
pub mod server;
pub mod state;

pub use server::{start, Controller, Observation, Scheduler, ServerConfig};
pub use state::{SchedulerConfig, SchedulerState, TaskState};
