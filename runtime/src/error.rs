//! Errors by whose fault they are: what a command turns into its exit status
//! (docs/cli.md: 2 for usage, 4 for the environment).

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Bad input: flags, sizes, names, a job too small. Fix the command.
    Usage(String),
    /// The environment failed: a scheduler unreachable, stale or not this
    /// one's, a file another user owns, a port in use, a file that cannot be
    /// written, a process that cannot be started.
    Environment(String),
}

impl Error {
    pub fn message(&self) -> &str {
        match self {
            Error::Usage(m) | Error::Environment(m) => m,
        }
    }

    /// The same error with `prefix: ` before its message.
    pub fn context(self, prefix: impl fmt::Display) -> Error {
        match self {
            Error::Usage(m) => Error::Usage(format!("{prefix}: {m}")),
            Error::Environment(m) => Error::Environment(format!("{prefix}: {m}")),
        }
    }

    /// The exit status of a command that fails with it.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Environment(_) => 4,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

/// `map_err(usage)`: a message is a usage error.
pub fn usage(m: impl Into<String>) -> Error {
    Error::Usage(m.into())
}

/// `map_err(environment)`: a message is an environment error.
pub fn environment(m: impl Into<String>) -> Error {
    Error::Environment(m.into())
}
