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
    #[pyo3(signature = (n_workers, threads_per_worker, local_directory, python, preload))]
    fn new(py: Python<'_>, n_workers: u32, threads_per_worker: u32, local_directory: PathBuf, python: PathBuf, preload: Vec<String>) -> PyResult<Cluster> {
        let settings = Arc::new(PythonSettings::new(Some(python), preload));
        let registry = taskfarm::Registry::with_builtins();
        let c = py.detach(|| LocalCluster::start_with(n_workers, threads_per_worker, local_directory, registry, settings)).map_err(os_error)?;
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

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Cluster>()?;
    m.add_class::<Session>()?;
    m.add_function(wrap_pyfunction!(error_parts, m)?)?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
