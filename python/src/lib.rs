//! `taskfarm._native`: the Rust half of the Python package. It holds no
//! Python logic: a [`Session`] (the asynchronous client of
//! `taskfarm::session`, speaking the real protocol with the HMAC handshake)
//! and a [`Cluster`] (the embedded scheduler and workers of `taskfarm run`).
//! Every blocking wait releases the GIL and checks for Ctrl-C.

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use taskfarm::cache::Cache;
use taskfarm::graph::{Expr, PyCall};
use taskfarm::local::LocalCluster;
use taskfarm::protocol::{Annotations, TaskDef};
use taskfarm::session::{self, Event};
use taskfarm::worker::PythonSettings;

fn os_error(e: impl std::fmt::Display) -> PyErr {
    PyOSError::new_err(e.to_string())
}

fn duration(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds.max(0.0)).map_err(|_| PyValueError::new_err(format!("not a valid number of seconds: {seconds}")))
}

/// The embedded one-machine cluster: a scheduler and workers in this
/// process, on loopback, with a fresh secret; Python tasks run in executor
/// processes of the given interpreter.
#[pyclass(module = "taskfarm._native")]
struct Cluster {
    inner: Option<LocalCluster>,
}

#[pymethods]
impl Cluster {
    #[new]
    #[pyo3(signature = (n_workers, threads_per_worker, local_directory, python, preload, cache=None))]
    fn new(
        py: Python<'_>,
        n_workers: u32,
        threads_per_worker: u32,
        local_directory: PathBuf,
        python: PathBuf,
        preload: Vec<String>,
        cache: Option<PathBuf>,
    ) -> PyResult<Cluster> {
        let settings = Arc::new(PythonSettings::new(Some(python), preload));
        let registry = taskfarm::Registry::with_builtins();
        let cache = cache.map(|d| Cache::open(&d).map_err(PyValueError::new_err)).transpose()?;
        let c = py
            .detach(|| LocalCluster::start_observed(n_workers, threads_per_worker, local_directory, registry, settings, None, cache))
            .map_err(os_error)?;
        Ok(Cluster { inner: Some(c) })
    }

    /// The scheduler's address, tcp://127.0.0.1:PORT.
    #[getter]
    fn address(&self) -> PyResult<String> {
        self.inner.as_ref().map(|c| c.address.clone()).ok_or_else(|| PyValueError::new_err("the cluster is closed"))
    }

    /// The secret clients authenticate with.
    #[getter]
    fn secret<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let c = self.inner.as_ref().ok_or_else(|| PyValueError::new_err("the cluster is closed"))?;
        Ok(PyBytes::new(py, c.secret()))
    }

    /// Stop the scheduler and its workers (and their Python executors).
    fn close(&mut self, py: Python<'_>) {
        if let Some(c) = self.inner.take() {
            py.detach(|| c.shutdown());
        }
    }
}

/// One task as the Python client describes it, a tuple: (key, deps, kind
/// ("call": a Python call; "value": a pickled value), function hash,
/// function pickle, arguments pickle, client's interpreter, (priority,
/// retries, resources, workers, timeout, order, cache)).
/// A task's options: (priority, retries, resources, workers, timeout, order,
/// cache: None, or False for `pure=False`).
type TaskOptions = (i32, u32, Vec<(String, f64)>, Vec<String>, Option<f64>, u32, Option<bool>);

#[derive(FromPyObject)]
struct Task<'py>(
    String,
    Vec<String>,
    String,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    String,
    TaskOptions,
);

impl Task<'_> {
    fn into_def(self) -> PyResult<TaskDef> {
        let Task(key, deps, kind, func_hash, func, args, python, (priority, retries, resources, workers, timeout, order, cache)) = self;
        let expr = match kind.as_str() {
            "call" => Expr::Py(Box::new(PyCall { func_hash: func_hash.as_bytes().to_vec(), func: func.as_bytes().to_vec(), args: args.as_bytes().to_vec(), python })),
            "value" => Expr::Pickled(args.as_bytes().to_vec()),
            other => return Err(PyValueError::new_err(format!("unknown task kind {other:?}"))),
        };
        let spec = bincode_spec(&expr);
        Ok(TaskDef { key, deps, spec, annotations: Annotations { priority, retries, resources, workers, timeout, functions: Vec::new(), cache }, order })
    }
}

fn bincode_spec(e: &Expr) -> Vec<u8> {
    taskfarm::protocol::encode_spec(e)
}

/// An asynchronous client session with a scheduler.
#[pyclass(module = "taskfarm._native")]
struct Session {
    inner: Option<session::Session>,
}

impl Session {
    fn get(&self) -> PyResult<&session::Session> {
        self.inner.as_ref().ok_or_else(|| PyValueError::new_err("the client is closed"))
    }
}

#[pymethods]
impl Session {
    /// Give up on a scheduler silent for this many seconds.
    fn set_scheduler_timeout(&self, seconds: f64) -> PyResult<()> {
        self.get()?.set_scheduler_timeout(duration(seconds)?).map_err(os_error)
    }

    /// Connect to tcp://HOST:PORT with the secret.
    #[staticmethod]
    fn connect(py: Python<'_>, address: String, secret: Vec<u8>) -> PyResult<Session> {
        let s = py.detach(|| session::Session::connect(&address, &secret)).map_err(os_error)?;
        Ok(Session { inner: Some(s) })
    }

    /// Find the scheduler through its file (waiting up to `timeout` s).
    #[staticmethod]
    fn from_scheduler_file(py: Python<'_>, path: PathBuf, timeout: f64) -> PyResult<Session> {
        let t = duration(timeout)?;
        let s = py.detach(|| session::Session::from_scheduler_file(&path, t)).map_err(os_error)?;
        Ok(Session { inner: Some(s) })
    }

    #[getter]
    fn address(&self) -> PyResult<String> {
        Ok(self.get()?.address.clone())
    }

    /// Submit tasks (tuples, see `taskfarm._client`) and want `wanted`.
    fn submit(&self, py: Python<'_>, tasks: Vec<Task<'_>>, wanted: Vec<String>) -> PyResult<()> {
        let defs = tasks.into_iter().map(Task::into_def).collect::<PyResult<Vec<_>>>()?;
        let s = self.get()?;
        py.detach(|| s.submit(defs, wanted)).map_err(os_error)
    }

    fn release(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<()> {
        let s = self.get()?;
        py.detach(|| s.release(keys)).map_err(os_error)
    }

    /// Events since the last call, waiting up to `timeout` s for one:
    /// (kind, key, text) with kind "finished", "erred", "stuck" or "lost".
    fn events(&self, py: Python<'_>, timeout: f64) -> PyResult<Vec<(&'static str, String, String)>> {
        let t = duration(timeout)?;
        let s = self.get()?;
        let evs = py.detach(|| s.events(t));
        Ok(evs
            .into_iter()
            .map(|e| match e {
                Event::Finished(k) => ("finished", k, String::new()),
                Event::Erred(k, e) => ("erred", k, e),
                Event::Stuck(k, r) => ("stuck", k, r),
                Event::Lost(r) => ("lost", String::new(), r),
            })
            .collect())
    }

    /// Whether every key has a value or an error.
    fn done(&self, keys: Vec<String>) -> PyResult<bool> {
        Ok(self.get()?.done(&keys))
    }

    /// The values of `keys`, waiting up to `timeout` s (None: for ever):
    /// per key (True, tag, bytes) or (False, 0, error text).
    #[pyo3(signature = (keys, timeout=None))]
    fn values<'py>(&self, py: Python<'py>, keys: Vec<String>, timeout: Option<f64>) -> PyResult<Vec<(bool, u8, Bound<'py, PyAny>)>> {
        let t = timeout.map(duration).transpose()?;
        let s = self.get()?;
        let mut signal: Option<PyErr> = None;
        let got = py.detach(|| {
            s.values(&keys, t, &mut || match Python::attach(|py| py.check_signals()) {
                Ok(()) => false,
                Err(e) => {
                    signal = Some(e);
                    true
                }
            })
        });
        if let Some(e) = signal {
            return Err(e);
        }
        let got = got.map_err(|e| {
            if e.starts_with("timed out") {
                PyTimeoutError::new_err(e)
            } else if e == "interrupted" {
                PyKeyboardInterrupt::new_err(e)
            } else {
                os_error(e)
            }
        })?;
        Ok(got
            .into_iter()
            .map(|o| match o {
                // pickles as bytearray: numpy arrays unpickled as views of
                // it are writable, as they are in the executors
                Ok((tag, body)) if tag == taskfarm::value::Data::TAG_PICKLE => (true, tag, PyByteArray::new(py, &body).into_any()),
                Ok((tag, body)) => (true, tag, PyBytes::new(py, &body).into_any()),
                Err(e) => (false, 0, e.into_pyobject(py).expect("str").into_any()),
            })
            .collect())
    }

    /// The scheduler's status as JSON text (the fields of `taskfarm status --json`).
    fn status_json(&self, py: Python<'_>) -> PyResult<String> {
        let s = self.get()?;
        let r = py.detach(|| s.status(Duration::from_secs(30))).map_err(os_error)?;
        serde_json_string(&r)
    }

    /// Keep `keys` under `name` on the scheduler with the opaque `data`.
    fn publish_dataset(&self, py: Python<'_>, name: String, keys: Vec<String>, data: Vec<u8>, replace: bool) -> PyResult<()> {
        let s = self.get()?;
        py.detach(|| s.publish_dataset(&name, keys, data, replace)).map_err(PyValueError::new_err)
    }

    /// (keys, data) of the dataset `name`, or None.
    fn get_dataset<'py>(&self, py: Python<'py>, name: String) -> PyResult<Option<(Vec<String>, Bound<'py, PyBytes>)>> {
        let s = self.get()?;
        let found = py.detach(|| s.get_dataset(&name)).map_err(os_error)?;
        Ok(found.map(|(keys, data)| (keys, PyBytes::new(py, &data))))
    }

    /// A worker plugin (a pickled callable) for every executor of every
    /// current and future worker.
    fn register_plugin(&self, py: Python<'_>, name: String, data: Vec<u8>) -> PyResult<()> {
        let s = self.get()?;
        py.detach(|| s.register_plugin(&name, data)).map_err(os_error)
    }

    fn unpublish_dataset(&self, py: Python<'_>, name: String) -> PyResult<()> {
        let s = self.get()?;
        py.detach(|| s.unpublish_dataset(&name)).map_err(os_error)
    }

    fn list_datasets(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let s = self.get()?;
        py.detach(|| s.list_datasets()).map_err(os_error)
    }

    /// Ask the scheduler and its workers to exit.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let s = self.get()?;
        py.detach(|| s.shutdown()).map_err(os_error)
    }

    fn close(&mut self, py: Python<'_>) {
        if let Some(mut s) = self.inner.take() {
            py.detach(|| s.close());
        }
    }
}

fn serde_json_string(r: &taskfarm::protocol::StatusReport) -> PyResult<String> {
    taskfarm::status::to_json_text(r).map_err(os_error)
}

/// The human part of a task error (without the pickled exception after it).
#[pyfunction]
fn error_parts(error: &str) -> (String, Option<String>) {
    match error.split_once(taskfarm::protocol::ERROR_DETAIL) {
        Some((text, detail)) => (text.to_string(), Some(detail.to_string())),
        None => (error.to_string(), None),
    }
}

fn open_cache(dir: PathBuf) -> PyResult<Cache> {
    Cache::open(&dir).map_err(PyValueError::new_err)
}

fn cache_key(key: &str) -> PyResult<taskfarm::cache::CacheKey> {
    taskfarm::cache::parse_key(key).ok_or_else(|| PyValueError::new_err(format!("not a cache key: {key:?}")))
}

/// The cache key (hex) of a Python call without dependencies.
#[pyfunction]
fn cache_call_key(func_hash: &[u8], args: &[u8]) -> String {
    taskfarm::cache::key_hex(&taskfarm::cache::python_call_key(func_hash, args))
}

/// A cached value as (tag, bytes), or None (absent, or broken and removed).
#[pyfunction]
fn cache_get<'py>(py: Python<'py>, dir: PathBuf, key: &str) -> PyResult<Option<(u8, Bound<'py, PyAny>)>> {
    let (cache, k) = (open_cache(dir)?, cache_key(key)?);
    let Some(data) = py.detach(|| cache.get(&k)) else { return Ok(None) };
    let (tag, body) = data.to_wire();
    // a bytearray for pickles: arrays that are views of it are writable
    Ok(Some((tag, if tag == taskfarm::Data::TAG_PICKLE { PyByteArray::new(py, &body).into_any() } else { PyBytes::new(py, &body).into_any() })))
}

/// Store a value given as (tag, bytes).
#[pyfunction]
fn cache_put(py: Python<'_>, dir: PathBuf, key: &str, tag: u8, body: Vec<u8>) -> PyResult<()> {
    let (cache, k) = (open_cache(dir)?, cache_key(key)?);
    let data = match taskfarm::Data::from_parts(tag, &body).map_err(|e| PyValueError::new_err(e.to_string()))? {
        Some(d) => d,
        None => taskfarm::Data::opaque(tag, body),
    };
    py.detach(|| cache.put(&k, &data)).map_err(os_error)
}

/// Whether a sound entry of `key` is there.
#[pyfunction]
fn cache_contains(py: Python<'_>, dir: PathBuf, key: &str) -> PyResult<bool> {
    let (cache, k) = (open_cache(dir)?, cache_key(key)?);
    Ok(py.detach(|| cache.present(&k)))
}

/// (entries, bytes) of the cache.
#[pyfunction]
fn cache_info(py: Python<'_>, dir: PathBuf) -> PyResult<(u64, u64)> {
    let cache = open_cache(dir)?;
    let i = py.detach(|| cache.info()).map_err(os_error)?;
    Ok((i.entries, i.bytes))
}

/// Remove entries not used for `older_than` seconds, then the least
/// recently used down to `max_bytes` (and to `max_items`); (entries, bytes) removed.
#[pyfunction]
#[pyo3(signature = (dir, max_bytes=None, older_than=None))]
fn cache_prune(py: Python<'_>, dir: PathBuf, max_bytes: Option<u64>, older_than: Option<f64>) -> PyResult<(u64, u64)> {
    let cache = open_cache(dir)?;
    let age = older_than.map(duration).transpose()?;
    py.detach(|| cache.prune(max_bytes, age)).map_err(os_error)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for f in [
        wrap_pyfunction!(cache_call_key, m)?,
        wrap_pyfunction!(cache_get, m)?,
        wrap_pyfunction!(cache_put, m)?,
        wrap_pyfunction!(cache_contains, m)?,
        wrap_pyfunction!(cache_info, m)?,
        wrap_pyfunction!(cache_prune, m)?,
    ] {
        m.add_function(f)?;
    }
    m.add_class::<Cluster>()?;
    m.add_class::<Session>()?;
    m.add_function(wrap_pyfunction!(error_parts, m)?)?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
