//! Parsing the `--device` flag into a libtorch device, with a clear error when it is unusable.

use tch::Device;

/// A device name that is malformed or names hardware this process cannot see.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Not `cpu` or `cuda:N`.
    #[error("unknown device '{0}': use cpu or cuda:N")]
    Malformed(String),
    /// A CUDA device that does not exist here.
    #[error("device '{name}' is not available: this process sees {count} CUDA device(s)")]
    Unavailable { name: String, count: i64 },
}

/// Parses `cpu`, `cuda` or `cuda:N`, checking that the CUDA device exists.
pub fn parse(name: &str) -> Result<Device, DeviceError> {
    let index = match name {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => name
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| DeviceError::Malformed(name.to_string()))?,
    };
    let count = tch::Cuda::device_count();
    if index as i64 >= count {
        return Err(DeviceError::Unavailable {
            name: name.to_string(),
            count,
        });
    }
    Ok(Device::Cuda(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_nonsense() {
        assert_eq!(parse("cpu").unwrap(), Device::Cpu);
        assert!(parse("gpu0")
            .unwrap_err()
            .to_string()
            .contains("use cpu or cuda:N"));
        assert!(parse("cuda:x").is_err());
        if tch::Cuda::device_count() == 0 {
            let err = parse("cuda:0").unwrap_err().to_string();
            assert!(err.contains("0 CUDA device"), "{err}");
        }
    }
}
