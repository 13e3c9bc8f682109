//! Task values: what a task returns, what is stored on workers and moved
//! between them.
//!
//! A value is JSON (the common case: literals, built-in results, command
//! output that is valid UTF-8, plain Python results), raw bytes, or a pickled
//! Python object (opaque here: only Python executors and clients unpickle it). On the wire a value is
//! one payload frame: a tag byte followed by its bytes, so a value fetched from
//! a peer is stored as it arrived and only decoded when a task uses it.

pub use crate::shm::Blob;
use serde_json::Value as Json;
use std::io;

/// A task's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Json(Json),
    Bytes(Vec<u8>),
    /// A Python object as pickle bytes (protocol 5), made by a Python task
    /// or scattered by a Python client. Never unpickled by the runtime.
    /// Large ones made by executors live in shared memory ([`crate::shm`]).
    Pickle(Blob),
}

impl Data {
    /// Payload tag of a JSON value (body: JSON text).
    pub const TAG_JSON: u8 = b'J';
    /// Payload tag of a bytes value (body: the bytes).
    pub const TAG_BYTES: u8 = b'B';
    /// Payload tag of a pickled Python object (body: the pickle).
    pub const TAG_PICKLE: u8 = b'P';

    pub fn null() -> Data {
        Data::Json(Json::Null)
    }

    /// Decode a JSON payload; `Ok(None)` when the tag says the body is raw
    /// bytes or a pickle (the caller keeps the body as the value, without
    /// copying: see [`Data::opaque`]).
    pub fn from_parts(tag: u8, body: &[u8]) -> io::Result<Option<Data>> {
        match tag {
            Data::TAG_JSON => serde_json::from_slice(body)
                .map(|j| Some(Data::Json(j)))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad JSON value: {e}"))),
            Data::TAG_BYTES | Data::TAG_PICKLE => Ok(None),
            other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("value payload has unknown tag byte {other}"))),
        }
    }

    /// The value of an opaque payload (tag `B` or `P`) whose body is kept as it is.
    pub fn opaque(tag: u8, body: Vec<u8>) -> Data {
        if tag == Data::TAG_PICKLE {
            Data::Pickle(Blob::Heap(body))
        } else {
            Data::Bytes(body)
        }
    }

    /// Tag byte and body as on the wire (JSON encoded, the rest as it is).
    pub fn to_wire(&self) -> (u8, std::borrow::Cow<'_, [u8]>) {
        use std::borrow::Cow;
        match self {
            Data::Json(j) => (Data::TAG_JSON, Cow::Owned(serde_json::to_vec(j).expect("JSON values serialise"))),
            Data::Bytes(b) => (Data::TAG_BYTES, Cow::Borrowed(b)),
            Data::Pickle(b) => (Data::TAG_PICKLE, Cow::Borrowed(b)),
        }
    }

    /// Approximate memory size in bytes, used for placement and reporting.
    pub fn nbytes(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::Pickle(b) => b.len() as u64,
            Data::Json(j) => json_size(j),
        }
    }

    /// The value as JSON for output. Bytes become `{"$bytes": "<base64>"}`,
    /// a pickled Python object `{"$pickle": "<base64>"}`.
    pub fn to_json(&self) -> Json {
        match self {
            Data::Json(j) => j.clone(),
            Data::Bytes(b) => serde_json::json!({ "$bytes": base64(b) }),
            Data::Pickle(b) => serde_json::json!({ "$pickle": base64(b) }),
        }
    }

    /// The value as text for a command line or stdin: strings and bytes
    /// as they are, a pickle as its bytes, everything else as compact JSON.
    pub fn to_text_bytes(&self) -> Vec<u8> {
        match self {
            Data::Json(Json::String(s)) => s.as_bytes().to_vec(),
            Data::Json(j) => serde_json::to_vec(j).expect("JSON values always serialise"),
            Data::Bytes(b) => b.clone(),
            Data::Pickle(b) => b.to_vec(),
        }
    }
}

fn json_size(j: &Json) -> u64 {
    match j {
        Json::Null | Json::Bool(_) | Json::Number(_) => 8,
        Json::String(s) => 24 + s.len() as u64,
        Json::Array(a) => 24 + a.iter().map(json_size).sum::<u64>(),
        Json::Object(o) => 48 + o.iter().map(|(k, v)| 24 + k.len() as u64 + json_size(v)).sum::<u64>(),
    }
}

/// Standard base64 (RFC 4648) with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A serde_json formatter that writes `{"a": 1, "b": [1, 2]}`: compact, on one
/// line, with a space after `:` and `,` (the layout of Python's `json.dumps`).
struct SpacedFormatter;

impl serde_json::ser::Formatter for SpacedFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// Write a JSON value on one line in the spaced layout.
pub fn write_spaced<W: io::Write>(w: &mut W, j: &Json) -> io::Result<()> {
    let mut ser = serde_json::Serializer::with_formatter(w, SpacedFormatter);
    serde::Serialize::serialize(j, &mut ser).map_err(io::Error::other)
}

/// Format results as one JSON object `{key: value, ...}` in the given order.
pub fn format_results<'a>(results: impl IntoIterator<Item = (&'a str, &'a Data)>) -> String {
    let mut out = Vec::new();
    out.push(b'{');
    for (i, (k, v)) in results.into_iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        serde_json::to_writer(&mut out, k).expect("strings serialise");
        out.extend_from_slice(b": ");
        write_spaced(&mut out, &v.to_json()).expect("writing to a Vec cannot fail");
    }
    out.push(b'}');
    String::from_utf8(out).expect("JSON is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_parts() {
        assert_eq!(Data::from_parts(Data::TAG_JSON, br#"{"a":[1,2.5]}"#).unwrap(), Some(Data::Json(json!({"a": [1, 2.5]}))));
        assert_eq!(Data::from_parts(Data::TAG_BYTES, b"\x00\xff").unwrap(), None);
        assert_eq!(Data::from_parts(Data::TAG_PICKLE, b"\x80\x05N.").unwrap(), None);
        assert_eq!(Data::opaque(Data::TAG_PICKLE, vec![1]), Data::Pickle(vec![1].into()));
        assert_eq!(Data::opaque(Data::TAG_BYTES, vec![1]), Data::Bytes(vec![1]));
        assert!(Data::from_parts(b'X', b"").is_err());
        assert!(Data::from_parts(Data::TAG_JSON, b"{bad").is_err());
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")];
        for (i, o) in cases {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn results_use_spaced_layout_in_given_order() {
        let z = Data::Json(json!(12));
        let l = Data::Json(json!([1, {"a": "b"}]));
        assert_eq!(format_results([("z", &z), ("a", &l)]), r#"{"z": 12, "a": [1, {"a": "b"}]}"#);
        assert_eq!(format_results(std::iter::empty()), "{}");
    }
}
