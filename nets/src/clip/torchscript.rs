//! Reads every tensor of a TorchScript archive's module tree (parameters AND buffers) without
//! running TorchScript. OpenAI ships CLIP as TorchScript archives; `tch::CModule` exposes only
//! `named_parameters`, which lacks the batch-norm running statistics the ResNet models need. An
//! archive is a zip holding `<name>/data.pkl` (the module tree, pickle protocol 2) and the raw
//! tensor storages under `<name>/data/<key>`; this module unpickles the small subset of pickle
//! that `torch.jit.save` writes.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use tch::{Kind, Tensor};

/// A pickled value, as far as module trees need.
#[derive(Debug, Clone)]
enum Value {
    Mark,
    None,
    Int(i64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A class or function reference (`module`, `name`).
    Global(String, String),
    /// A TorchScript module or other object; `state` is set by BUILD.
    Object(Box<Value>),
    Storage(Rc<Tensor>),
    Tensor(Rc<Tensor>),
    /// Anything else: booleans, floats, results of other callables (never a tensor).
    Opaque,
}

/// All tensors reachable from the archive's root module, named by their attribute paths
/// (`visual.bn1.running_mean`), as `state_dict()` would name them. A `torch.save`d dict of tensors
/// (the same zip layout) reads the same way.
pub fn read_module_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| format!("not a zip archive: {e}"))?;
    let data_pkl = archive
        .file_names()
        .find(|name| name.ends_with("/data.pkl") && name.matches('/').count() == 1)
        .map(str::to_string)
        .ok_or("no `<name>/data.pkl` in the archive")?;
    let prefix = data_pkl.trim_end_matches("data.pkl").to_string();
    let pickle = read_entry(&mut archive, &data_pkl)?;
    let mut unpickler = Unpickler {
        archive: &mut archive,
        prefix,
        storages: HashMap::new(),
    };
    let root = unpickler.load(&pickle)?;
    let mut tensors = Vec::new();
    collect_tensors(&root, "", &mut tensors);
    if tensors.is_empty() {
        return Err("the archive holds no named tensors".into());
    }
    Ok(tensors)
}

fn read_entry(archive: &mut zip::ZipArchive<File>, name: &str) -> Result<Vec<u8>, String> {
    let mut entry = archive.by_name(name).map_err(|e| format!("{name}: {e}"))?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(bytes)
}

/// Walks module objects (and plain dicts, as in a `torch.save`d state dict): tensor entries are
/// named `prefix + key`, nested modules and dicts recursed into.
fn collect_tensors(value: &Value, prefix: &str, out: &mut Vec<(String, Tensor)>) {
    let items = match value {
        Value::Object(state) => match state.as_ref() {
            Value::Dict(items) => items,
            _ => return,
        },
        Value::Dict(items) => items,
        _ => return,
    };
    for (key, item) in items {
        let Value::Str(key) = key else { continue };
        match item {
            Value::Tensor(tensor) => out.push((format!("{prefix}{key}"), tensor.shallow_clone())),
            Value::Object(_) | Value::Dict(_) => {
                collect_tensors(item, &format!("{prefix}{key}."), out)
            }
            _ => {}
        }
    }
}

fn storage_kind(class: &str) -> Option<Kind> {
    Some(match class {
        "FloatStorage" => Kind::Float,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "DoubleStorage" => Kind::Double,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

struct Unpickler<'a> {
    archive: &'a mut zip::ZipArchive<File>,
    prefix: String,
    storages: HashMap<String, Rc<Tensor>>,
}

/// Reads little-endian fixed-size fields off the pickle stream.
struct Cursor<'b> {
    bytes: &'b [u8],
    pos: usize,
}

impl<'b> Cursor<'b> {
    fn take(&mut self, n: usize) -> Result<&'b [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or("truncated pickle")?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().map_err(|_| "truncated pickle")?,
        ))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| "truncated pickle")?,
        ))
    }

    fn line(&mut self) -> Result<String, String> {
        let len = self.bytes[self.pos..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unterminated pickle line")?;
        let line = String::from_utf8_lossy(self.take(len)?).into_owned();
        self.pos += 1;
        Ok(line)
    }

    fn utf8(&mut self, len: usize) -> Result<String, String> {
        String::from_utf8(self.take(len)?.to_vec()).map_err(|e| e.to_string())
    }
}

impl Unpickler<'_> {
    fn load(&mut self, bytes: &[u8]) -> Result<Value, String> {
        let mut cursor = Cursor { bytes, pos: 0 };
        let mut stack: Vec<Value> = Vec::new();
        let mut memo: HashMap<u32, Value> = HashMap::new();
        loop {
            let opcode = cursor.u8()?;
            match opcode {
                0x80 => {
                    cursor.u8()?;
                } // PROTO
                0x95 => {
                    cursor.take(8)?;
                } // FRAME
                b'.' => return stack.pop().ok_or_else(|| "empty pickle".to_string()),
                b'(' => stack.push(Value::Mark),
                b'N' => stack.push(Value::None),
                0x88 | 0x89 => stack.push(Value::Opaque), // booleans: only `requires_grad`
                b'K' => stack.push(Value::Int(i64::from(cursor.u8()?))),
                b'M' => stack.push(Value::Int(i64::from(cursor.u16()?))),
                b'J' => stack.push(Value::Int(i64::from(cursor.u32()? as i32))),
                0x8a => {
                    let len = usize::from(cursor.u8()?);
                    stack.push(Value::Int(long1(cursor.take(len)?)?));
                }
                b'G' => {
                    cursor.take(8)?; // a float attribute: not a tensor
                    stack.push(Value::Opaque);
                }
                b'X' => {
                    let len = cursor.u32()? as usize;
                    stack.push(Value::Str(cursor.utf8(len)?));
                }
                0x8c => {
                    let len = usize::from(cursor.u8()?);
                    stack.push(Value::Str(cursor.utf8(len)?));
                }
                b')' => stack.push(Value::Tuple(Vec::new())),
                b']' => stack.push(Value::List(Vec::new())),
                b'}' => stack.push(Value::Dict(Vec::new())),
                b't' => {
                    let items = pop_to_mark(&mut stack)?;
                    stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(opcode - 0x84);
                    let at = stack.len().checked_sub(n).ok_or("stack underflow")?;
                    let items = stack.split_off(at);
                    stack.push(Value::Tuple(items));
                }
                b'a' | b'e' => {
                    let items = if opcode == b'a' {
                        vec![pop(&mut stack)?]
                    } else {
                        pop_to_mark(&mut stack)?
                    };
                    match stack.last_mut() {
                        Some(Value::List(list)) => list.extend(items),
                        _ => return Err("APPEND to a non-list".into()),
                    }
                }
                b's' | b'u' => {
                    let items = if opcode == b's' {
                        let value = pop(&mut stack)?;
                        vec![pop(&mut stack)?, value]
                    } else {
                        pop_to_mark(&mut stack)?
                    };
                    match stack.last_mut() {
                        Some(Value::Dict(dict)) => {
                            let mut items = items.into_iter();
                            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                                dict.push((k, v));
                            }
                        }
                        _ => return Err("SETITEM on a non-dict".into()),
                    }
                }
                b'c' => {
                    let module = cursor.line()?;
                    let name = cursor.line()?;
                    stack.push(Value::Global(module, name));
                }
                b'q' => {
                    let key = u32::from(cursor.u8()?);
                    memo.insert(key, stack.last().ok_or("stack underflow")?.clone());
                }
                b'r' => {
                    let key = cursor.u32()?;
                    memo.insert(key, stack.last().ok_or("stack underflow")?.clone());
                }
                0x94 => {
                    let key = memo.len() as u32;
                    memo.insert(key, stack.last().ok_or("stack underflow")?.clone());
                }
                b'h' | b'j' => {
                    let key = if opcode == b'h' {
                        u32::from(cursor.u8()?)
                    } else {
                        cursor.u32()?
                    };
                    stack.push(
                        memo.get(&key)
                            .cloned()
                            .ok_or_else(|| format!("memo {key} unset"))?,
                    );
                }
                0x81 => {
                    pop(&mut stack)?; // constructor arguments
                    pop(&mut stack)?; // class
                    stack.push(Value::Object(Box::new(Value::None)));
                }
                b'b' => {
                    let state = pop(&mut stack)?;
                    if let Some(Value::Object(slot)) = stack.last_mut() {
                        **slot = state;
                    }
                }
                b'R' => {
                    let args = pop(&mut stack)?;
                    let callable = pop(&mut stack)?;
                    stack.push(reduce(callable, args)?);
                }
                b'Q' => {
                    let pid = pop(&mut stack)?;
                    stack.push(self.persistent_load(pid)?);
                }
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {}",
                        cursor.pos - 1
                    ))
                }
            }
        }
    }

    /// `('storage', torch.<Kind>Storage, key, location, numel)`: the raw bytes of `data/<key>`.
    fn persistent_load(&mut self, pid: Value) -> Result<Value, String> {
        let Value::Tuple(fields) = pid else {
            return Err("persistent id is not a tuple".into());
        };
        let (Some(Value::Global(_, class)), Some(Value::Str(key))) = (fields.get(1), fields.get(2))
        else {
            return Err(format!("unexpected persistent id {fields:?}"));
        };
        if let Some(storage) = self.storages.get(key) {
            return Ok(Value::Storage(storage.clone()));
        }
        let kind =
            storage_kind(class).ok_or_else(|| format!("unsupported storage type {class}"))?;
        let bytes = read_entry(self.archive, &format!("{}data/{key}", self.prefix))?;
        let numel = bytes.len() / kind.elt_size_in_bytes();
        let storage = Rc::new(
            Tensor::f_from_data_size(&bytes, &[numel as i64], kind).map_err(|e| e.to_string())?,
        );
        self.storages.insert(key.clone(), storage.clone());
        Ok(Value::Storage(storage))
    }
}

/// The few callables a module tree's pickle uses.
fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global(module, name) = callable else {
        return Ok(Value::Opaque);
    };
    let Value::Tuple(mut args) = args else {
        return Ok(Value::Opaque);
    };
    Ok(match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => rebuild_tensor(&args)?,
        ("collections", "OrderedDict") => Value::Dict(Vec::new()),
        ("torch.jit._pickle", _) if !args.is_empty() => args.swap_remove(0),
        _ => Value::Opaque,
    })
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
fn rebuild_tensor(args: &[Value]) -> Result<Value, String> {
    let ints = |value: Option<&Value>| -> Result<Vec<i64>, String> {
        match value {
            Some(Value::Tuple(items)) => items
                .iter()
                .map(|item| match item {
                    Value::Int(i) => Ok(*i),
                    other => Err(format!("non-integer size {other:?}")),
                })
                .collect(),
            other => Err(format!("expected a size tuple, found {other:?}")),
        }
    };
    let (Some(Value::Storage(storage)), Some(Value::Int(offset))) = (args.first(), args.get(1))
    else {
        return Err("malformed _rebuild_tensor_v2 arguments".into());
    };
    let (size, stride) = (ints(args.get(2))?, ints(args.get(3))?);
    let tensor = storage
        .f_as_strided(&size, &stride, *offset)
        .map_err(|e| e.to_string())?;
    Ok(Value::Tensor(Rc::new(tensor.contiguous())))
}

fn pop(stack: &mut Vec<Value>) -> Result<Value, String> {
    stack.pop().ok_or_else(|| "stack underflow".to_string())
}

fn pop_to_mark(stack: &mut Vec<Value>) -> Result<Vec<Value>, String> {
    let mark = stack
        .iter()
        .rposition(|v| matches!(v, Value::Mark))
        .ok_or("MARK missing")?;
    let items = stack.split_off(mark + 1);
    stack.pop();
    Ok(items)
}

/// LONG1: a little-endian two's-complement integer of up to 8 bytes.
fn long1(bytes: &[u8]) -> Result<i64, String> {
    if bytes.len() > 8 {
        return Err("integer too large".into());
    }
    let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
        0xff
    } else {
        0
    };
    let mut raw = [fill; 8];
    raw[..bytes.len()].copy_from_slice(bytes);
    Ok(i64::from_le_bytes(raw))
}
