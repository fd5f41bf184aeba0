//! A small GGUF v3 writer, and llama.cpp's quantizer for the files it writes.
//!
//! The file format is llama.cpp's GGUF, version 3 (see `ggml/docs/gguf.md` in the
//! llama.cpp repository): a header (`"GGUF"`, version, tensor count, key-value count),
//! the key-value metadata, the tensor infos (name, dimensions, ggml type, offset), then
//! the tensor data, each tensor aligned to [`ALIGNMENT`] bytes. Everything is
//! little-endian. This writer emits `F32` tensors only; [`quantize`] turns such a file
//! into `Q8_0` with llama.cpp's own `llama_model_quantize`.
//!
//! [`write_demo_model`] builds random-weight llama models with it (`demo.rs`), for
//! the tests, the out-of-the-box demo and the benchmarks.

use std::ffi::CString;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

mod demo;

pub use demo::{write_demo_model, DemoModelSpec, DemoQuantization, CHATML_TEMPLATE};

/// Alignment of the tensor data section and of each tensor in it (GGUF's default).
pub const ALIGNMENT: u64 = 32;

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const GGUF_VERSION: u32 = 3;
/// ggml type id of 32-bit float tensors.
const GGML_TYPE_F32: u32 = 0;
/// llama.cpp file type "all F32" for `general.file_type`.
const LLAMA_FTYPE_ALL_F32: u32 = 0;

/// Errors of the GGUF writer, the demo-model generator and [`quantize`].
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be created or written.
    #[error("cannot write GGUF file {path}: {source}")]
    Io {
        /// File being written.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// A tensor's data length does not match the product of its dimensions.
    #[error("tensor {name}: {len} values given but the shape {dims:?} needs {expected}")]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// Dimensions (`ne[0]` first, the fastest-varying one).
        dims: Vec<u64>,
        /// Number of values the dimensions imply.
        expected: u64,
        /// Number of values given.
        len: u64,
    },
    /// The model shape is not usable (for example the heads do not divide the embedding).
    #[error("invalid demo model shape: {0}")]
    InvalidSpec(String),
    /// llama.cpp's quantizer failed.
    #[error("llama_model_quantize failed with status {status} for {input} -> {output}")]
    Quantize {
        /// Source file (F32).
        input: PathBuf,
        /// Destination file.
        output: PathBuf,
        /// Non-zero return value of `llama_model_quantize`.
        status: u32,
    },
}

/// A metadata value. Only the types the demo model needs are represented.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// GGUF type 4, `UINT32`.
    U32(u32),
    /// GGUF type 5, `INT32`.
    I32(i32),
    /// GGUF type 6, `FLOAT32`.
    F32(f32),
    /// GGUF type 7, `BOOL`.
    Bool(bool),
    /// GGUF type 8, `STRING` (UTF-8, u64 length prefix, no terminator).
    Str(String),
    /// GGUF type 9 `ARRAY` of `STRING`.
    StrArray(Vec<String>),
    /// GGUF type 9 `ARRAY` of `FLOAT32`.
    F32Array(Vec<f32>),
    /// GGUF type 9 `ARRAY` of `INT32`.
    I32Array(Vec<i32>),
}

impl MetaValue {
    const fn type_id(&self) -> u32 {
        match self {
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::Str(_) => 8,
            Self::StrArray(_) | Self::F32Array(_) | Self::I32Array(_) => 9,
        }
    }
}

/// Fills a tensor's values (row-major, `ne[0]` fastest) when the file is written.
type Fill = Box<dyn FnOnce(&mut [f32]) + Send>;

struct PendingTensor {
    name: String,
    /// `ne[0]`, `ne[1]`, ... as GGUF stores them (`ne[0]` is the row length).
    dims: Vec<u64>,
    fill: Fill,
}

impl PendingTensor {
    fn n_values(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// Builds a GGUF v3 file: metadata plus `F32` tensors.
///
/// Tensor values are produced by closures run at [`GgufWriter::write`] time, one
/// tensor at a time, so a multi-gigabyte model never has to sit in memory.
#[derive(Default)]
pub struct GgufWriter {
    kvs: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("kvs", &self.kvs.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufWriter {
    /// An empty file description.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata key; keys are written in insertion order.
    pub fn add_kv(&mut self, key: impl Into<String>, value: MetaValue) {
        self.kvs.push((key.into(), value));
    }

    /// Adds an `F32` tensor with the given values.
    ///
    /// `dims` is in GGUF order: `dims[0]` is the row length (a weight matrix that maps
    /// `n_in` inputs to `n_out` outputs is `[n_in, n_out]`).
    ///
    /// # Errors
    /// [`GgufError::ShapeMismatch`] when `data.len()` is not the product of `dims`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        data: Vec<f32>,
    ) -> Result<(), GgufError> {
        let name = name.into();
        let expected: u64 = dims.iter().product();
        if expected != data.len() as u64 {
            return Err(GgufError::ShapeMismatch {
                name,
                dims: dims.to_vec(),
                expected,
                len: data.len() as u64,
            });
        }
        self.add_tensor_with(name, dims, move |out| out.copy_from_slice(&data));
        Ok(())
    }

    /// Adds an `F32` tensor whose values `fill` writes into a zeroed buffer of the
    /// tensor's size when the file is written.
    pub fn add_tensor_with(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        fill: impl FnOnce(&mut [f32]) + Send + 'static,
    ) {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            fill: Box::new(fill),
        });
    }

    /// Writes the file.
    ///
    /// # Errors
    /// [`GgufError::Io`] when the file cannot be created or written.
    pub fn write(self, path: &Path) -> Result<(), GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(io)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        self.write_to(&mut out).map_err(io)?;
        out.flush().map_err(io)?;
        out.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)
    }

    /// Writes the file to any sink.
    ///
    /// # Errors
    /// Whatever the sink returns.
    pub fn write_to(self, out: &mut impl Write) -> std::io::Result<()> {
        // Counts what was written, for the padding before the data section.
        let mut written: u64 = 0;
        let mut put = |out: &mut dyn Write, bytes: &[u8]| -> std::io::Result<u64> {
            written += bytes.len() as u64;
            out.write_all(bytes).map(|()| written)
        };

        put(out, GGUF_MAGIC)?;
        put(out, &GGUF_VERSION.to_le_bytes())?;
        put(out, &(self.tensors.len() as u64).to_le_bytes())?;
        put(out, &(self.kvs.len() as u64).to_le_bytes())?;
        for (key, value) in &self.kvs {
            put(out, &encode_str(key))?;
            put(out, &value.type_id().to_le_bytes())?;
            put(out, &encode_value(value))?;
        }

        // Tensor infos: offsets are relative to the start of the data section.
        let mut offset: u64 = 0;
        for tensor in &self.tensors {
            put(out, &encode_str(&tensor.name))?;
            put(out, &(tensor.dims.len() as u32).to_le_bytes())?;
            for dim in &tensor.dims {
                put(out, &dim.to_le_bytes())?;
            }
            put(out, &GGML_TYPE_F32.to_le_bytes())?;
            put(out, &offset.to_le_bytes())?;
            offset = align(offset + tensor.n_values() * 4);
        }

        let zeros = [0u8; ALIGNMENT as usize];
        let header_len = put(out, &[])?;
        let pad = (align(header_len) - header_len) as usize;
        put(out, &zeros[..pad])?;

        let mut buffer: Vec<f32> = Vec::new();
        let mut bytes: Vec<u8> = Vec::new();
        for tensor in self.tensors {
            let n = tensor.n_values() as usize;
            buffer.clear();
            buffer.resize(n, 0.0);
            (tensor.fill)(&mut buffer);
            bytes.clear();
            bytes.extend(buffer.iter().flat_map(|v| v.to_le_bytes()));
            let pad = (align(n as u64 * 4) - n as u64 * 4) as usize;
            put(out, &bytes)?;
            put(out, &zeros[..pad])?;
        }
        Ok(())
    }
}

const fn align(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

fn encode_str(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + s.len());
    v.extend_from_slice(&(s.len() as u64).to_le_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

fn encode_value(value: &MetaValue) -> Vec<u8> {
    match value {
        MetaValue::U32(v) => v.to_le_bytes().to_vec(),
        MetaValue::I32(v) => v.to_le_bytes().to_vec(),
        MetaValue::F32(v) => v.to_le_bytes().to_vec(),
        MetaValue::Bool(v) => vec![u8::from(*v)],
        MetaValue::Str(s) => encode_str(s),
        MetaValue::StrArray(items) => {
            let mut v = array_header(8, items.len());
            for item in items {
                v.extend(encode_str(item));
            }
            v
        }
        MetaValue::F32Array(items) => {
            let mut v = array_header(6, items.len());
            v.extend(items.iter().flat_map(|x| x.to_le_bytes()));
            v
        }
        MetaValue::I32Array(items) => {
            let mut v = array_header(5, items.len());
            v.extend(items.iter().flat_map(|x| x.to_le_bytes()));
            v
        }
    }
}

fn array_header(elem_type: u32, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&elem_type.to_le_bytes());
    v.extend_from_slice(&(len as u64).to_le_bytes());
    v
}

/// Target storage of [`quantize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizeType {
    /// llama.cpp's `LLAMA_FTYPE_MOSTLY_Q8_0` (1-D tensors stay F32).
    Q8_0,
}

/// Converts an F32/F16 GGUF model into another storage type with llama.cpp's own
/// `llama_model_quantize`. Initialises the llama.cpp backend if needed.
///
/// # Errors
/// [`GgufError::Quantize`] when llama.cpp reports a failure (missing input, bad
/// shapes, unwritable output); [`GgufError::InvalidSpec`] for a path with a NUL byte.
pub fn quantize(input: &Path, output: &Path, to: QuantizeType) -> Result<(), GgufError> {
    crate::engine::backend();
    let c_path = |p: &Path| {
        CString::new(p.to_string_lossy().as_bytes())
            .map_err(|_| GgufError::InvalidSpec(format!("path {} contains NUL", p.display())))
    };
    let (c_in, c_out) = (c_path(input)?, c_path(output)?);
    // SAFETY: plain C call returning a value struct.
    let mut params = unsafe { llama_cpp_sys_2::llama_model_quantize_default_params() };
    params.ftype = match to {
        QuantizeType::Q8_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0,
    };
    params.nthread = std::thread::available_parallelism().map_or(1, |n| n.get() as i32);
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call, and
    // `params` is a fully initialised struct from llama.cpp's own defaults.
    let status =
        unsafe { llama_cpp_sys_2::llama_model_quantize(c_in.as_ptr(), c_out.as_ptr(), &params) };
    if status == 0 {
        Ok(())
    } else {
        Err(GgufError::Quantize {
            input: input.to_path_buf(),
            output: output.to_path_buf(),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_gguf_v3() {
        let mut w = GgufWriter::new();
        w.add_kv("k", MetaValue::U32(7));
        w.add_tensor("t", &[3], vec![1.0, 2.0, 3.0]).unwrap();
        let mut bytes = Vec::new();
        w.write_to(&mut bytes).unwrap();
        assert_eq!(&bytes[..4], b"GGUF");
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
        assert_eq!(
            u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
            1,
            "tensors"
        );
        assert_eq!(
            u64::from_le_bytes(bytes[16..24].try_into().unwrap()),
            1,
            "kvs"
        );
        // Data section is aligned and holds the values at the end.
        assert_eq!(bytes.len() as u64 % ALIGNMENT, 0);
        let data_start = bytes.len() - ALIGNMENT as usize;
        let first = f32::from_le_bytes(bytes[data_start..data_start + 4].try_into().unwrap());
        assert_eq!(first, 1.0);
    }

    #[test]
    fn shape_mismatch_is_rejected() {
        let mut w = GgufWriter::new();
        let err = w.add_tensor("t", &[2, 2], vec![0.0; 3]).unwrap_err();
        assert!(err.to_string().contains("needs 4"), "{err}");
    }
}
