//! `taskfarm cache`: look after a result cache directory (`--cache DIR`).

use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use crate::*;

#[derive(Subcommand)]
pub(crate) enum CacheCommand {
    /// How many entries and bytes the cache holds, and when they were last used.
    Info(CacheDirArg),
    /// Remove every entry.
    Clear(CacheDirArg),
    /// Remove entries not used for --older-than, then the least recently used until at most --max-size is left.
    Prune(PruneArgs),
}

#[derive(Args)]
pub(crate) struct CacheDirArg {
    /// The cache directory (as given to --cache).
    pub(crate) dir: PathBuf,
}

#[derive(Args)]
pub(crate) struct PruneArgs {
    /// Keep at most this much, e.g. 50GB (10^9 bytes) or 50GiB (2^30 bytes).
    #[arg(long, value_name = "SIZE", required_unless_present = "older_than")]
    pub(crate) max_size: Option<String>,
    /// Remove entries not used for this long, e.g. 30d, 12h.
    #[arg(long, value_name = "DURATION", value_parser = crate::args::parse_duration)]
    pub(crate) older_than: Option<Duration>,
    /// The cache directory (as given to --cache).
    pub(crate) dir: PathBuf,
}

fn open(dir: &std::path::Path) -> Result<taskfarm::cache::Cache, Fail> {
    if !dir.is_dir() {
        return Err(Fail(EXIT_USAGE, format!("{} is not a cache directory (it does not exist)", dir.display())));
    }
    taskfarm::cache::Cache::open(dir).map_err(|e| Fail(EXIT_USAGE, e))
}

fn ago(t: Option<SystemTime>) -> String {
    match t.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(d) if d.as_secs() >= 86400 => format!("{} days ago", d.as_secs() / 86400),
        Some(d) if d.as_secs() >= 3600 => format!("{} hours ago", d.as_secs() / 3600),
        Some(d) => format!("{} s ago", d.as_secs()),
        None => "-".into(),
    }
}

pub(crate) fn cmd_cache(c: CacheCommand) -> Result<u8, Fail> {
    let bytes = taskfarm::util::format_bytes;
    match c {
        CacheCommand::Info(a) => {
            let cache = open(&a.dir)?;
            let i = cache.info().map_err(|e| Fail::env(format!("cannot read the cache {}: {e}", a.dir.display())))?;
            outln!("cache      {}", a.dir.display());
            outln!("entries    {}", i.entries);
            outln!("size       {}", bytes(i.bytes));
            outln!("last used  {} (least recently used: {})", ago(i.newest), ago(i.oldest));
        }
        CacheCommand::Clear(a) => {
            let cache = open(&a.dir)?;
            let (n, b) = cache.clear().map_err(|e| Fail::env(format!("cannot clear the cache {}: {e}", a.dir.display())))?;
            outln!("removed {n} entries ({})", bytes(b));
        }
        CacheCommand::Prune(a) => {
            let max = match &a.max_size {
                Some(s) => match taskfarm::util::parse_memory(s, 0) {
                    Ok(Some(b)) if s.trim_end().ends_with(|c: char| c.is_ascii_alphabetic()) => Some(b),
                    Ok(_) => return Err(Fail(EXIT_USAGE, format!("--max-size '{s}': give a size with a unit, e.g. 50GB or 50GiB"))),
                    Err(e) => return Err(Fail(EXIT_USAGE, format!("--max-size: {e}"))),
                },
                None => None,
            };
            let cache = open(&a.dir)?;
            let (n, b) = cache.prune(max, a.older_than).map_err(|e| Fail::env(format!("cannot prune the cache {}: {e}", a.dir.display())))?;
            let left = cache.info().map(|i| format!("{} entries ({}) left", i.entries, bytes(i.bytes))).unwrap_or_default();
            outln!("removed {n} entries ({}); {left}", bytes(b));
        }
    }
    Ok(0)
}
