//! Sweeps (`tessera submit --sweep lr=0.05,0.1 --sweep cutn=32,64`, pytti's `--multirun`): a
//! job renders every prompt at every combination of the swept settings' values, each result
//! labelled with its values.
//!
//! Keys and values go through the one settings table ([`crate::settings`]), so a sweep names
//! only settings a job carries and never takes a value that setting's flag would refuse. The
//! planner expands the combinations (the CLI sends the prompt file as it is, so only the
//! coordinator knows the prompts), and each result keeps its values, from which its label
//! (`lr0.1_cutn64`, safe in file names) is made.

use crate::job::SettingsPatch;
use crate::settings::{self, OutOfRange};
use serde::{Deserialize, Serialize};

/// Character that separates a sweep's key from its values, and the values from each other.
const KEY_SEPARATOR: char = '=';
const VALUE_SEPARATOR: char = ',';

/// One swept setting with the values it takes, in the order given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    /// The setting's name in the table (`learning_rate` also when the user typed `lr`).
    pub key: String,
    /// Its values, as the table writes them (`0.1` for `0.10`), each once.
    pub values: Vec<String>,
}

/// One swept setting's value in one result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepValue {
    /// The setting's name in the table.
    pub key: String,
    /// Its value for this result.
    pub value: String,
}

/// Why a sweep is refused; each names the key (and value) at fault.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SweepError {
    /// Not `KEY=V1,V2`.
    #[error("sweep '{0}' is not KEY=VALUE,VALUE... (for example lr=0.05,0.1)")]
    Syntax(String),
    /// No job setting has this name.
    #[error("sweep key '{key}' is not a job setting; known: {known}")]
    UnknownKey {
        /// The key as given.
        key: String,
        /// Every key a sweep takes.
        known: String,
    },
    /// No values, or an empty one.
    #[error("sweep {key} has an empty value; give one or more values, separated by ','")]
    EmptyValue {
        /// The setting.
        key: String,
    },
    /// A value the setting's range refuses.
    #[error("sweep {key}: {source}")]
    OutOfRange {
        /// The setting.
        key: String,
        /// The value, and the range it is outside of.
        source: OutOfRange,
    },
    /// A value given twice would make the same results twice.
    #[error("sweep {key} gives the value {value} twice")]
    RepeatedValue {
        /// The setting.
        key: String,
        /// The value.
        value: String,
    },
    /// A setting swept twice.
    #[error("setting {key} is swept twice; give all its values in one --sweep")]
    RepeatedKey {
        /// The setting.
        key: String,
    },
    /// Sweeps on a job that renders nothing.
    #[error("an upscale-only job renders nothing, so it has no render settings to sweep")]
    UpscaleOnly,
    /// More combinations than a job may have results.
    #[error("the sweeps make {count} combinations or more; a job has at most {max} results")]
    TooMany {
        /// Combinations (at least).
        count: u128,
        /// Results a job may have.
        max: usize,
    },
}

impl Sweep {
    /// Parses `KEY=V1,V2,...` as typed on a command line.
    pub fn parse(text: &str) -> Result<Sweep, SweepError> {
        let (key, values) = text
            .split_once(KEY_SEPARATOR)
            .ok_or_else(|| SweepError::Syntax(text.to_string()))?;
        let values: Vec<&str> = values.split(VALUE_SEPARATOR).collect();
        Sweep::new(key, &values)
    }

    /// The sweep of setting `key` over `values`, each checked against the setting's range.
    pub fn new(key: &str, values: &[impl AsRef<str>]) -> Result<Sweep, SweepError> {
        let setting = settings::find_job_setting(key).ok_or_else(|| SweepError::UnknownKey {
            key: key.to_string(),
            known: known_keys(),
        })?;
        let key = setting.name().to_string();
        let mut checked: Vec<String> = Vec::with_capacity(values.len());
        for value in values.iter().map(AsRef::as_ref) {
            if value.trim().is_empty() {
                return Err(SweepError::EmptyValue { key });
            }
            let parsed =
                settings::parse_text(setting, value).map_err(|source| SweepError::OutOfRange {
                    key: key.clone(),
                    source,
                })?;
            let text = match parsed {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            if checked.contains(&text) {
                return Err(SweepError::RepeatedValue { key, value: text });
            }
            checked.push(text);
        }
        if checked.is_empty() {
            return Err(SweepError::EmptyValue { key });
        }
        Ok(Sweep {
            key,
            values: checked,
        })
    }
}

/// Every key a sweep takes (the job settings' names), for errors.
fn known_keys() -> String {
    let names: Vec<String> = settings::ALL
        .iter()
        .filter(|s| s.surfaces().job)
        .map(|s| match s.short() {
            short if short != s.name() => format!("{} ({short})", s.name()),
            _ => s.name().to_string(),
        })
        .collect();
    names.join(", ")
}

/// Refuses a setting swept twice (also when spelled two ways, `lr` and `learning_rate`).
pub fn check_keys(sweeps: &[Sweep]) -> Result<(), SweepError> {
    for (i, sweep) in sweeps.iter().enumerate() {
        if sweeps[..i].iter().any(|s| s.key == sweep.key) {
            return Err(SweepError::RepeatedKey {
                key: sweep.key.clone(),
            });
        }
    }
    Ok(())
}

/// Every combination of the values of `sweeps`, the first sweep varying slowest; one empty
/// combination when there are no sweeps. Refuses repeated keys and more than `max`
/// combinations (before making them).
pub fn combinations(sweeps: &[Sweep], max: usize) -> Result<Vec<Vec<SweepValue>>, SweepError> {
    check_keys(sweeps)?;
    let count = sweeps
        .iter()
        .try_fold(1u128, |n, s| n.checked_mul(s.values.len() as u128))
        .unwrap_or(u128::MAX);
    if count > max as u128 {
        return Err(SweepError::TooMany { count, max });
    }
    let mut all = vec![Vec::new()];
    for sweep in sweeps {
        all = all
            .into_iter()
            .flat_map(|head: Vec<SweepValue>| {
                sweep.values.iter().map(move |value| {
                    let mut next = head.clone();
                    next.push(SweepValue {
                        key: sweep.key.clone(),
                        value: value.clone(),
                    });
                    next
                })
            })
            .collect();
    }
    Ok(all)
}

/// The settings patch of one combination: what the planner applies over a prompt's settings.
pub fn patch(values: &[SweepValue]) -> Result<SettingsPatch, SweepError> {
    let mut fields = serde_json::Map::new();
    for v in values {
        let setting = settings::find_job_setting(&v.key).ok_or_else(|| SweepError::UnknownKey {
            key: v.key.clone(),
            known: known_keys(),
        })?;
        let value =
            settings::parse_text(setting, &v.value).map_err(|source| SweepError::OutOfRange {
                key: v.key.clone(),
                source,
            })?;
        fields.insert(setting.name().to_string(), value);
    }
    Ok(serde_json::from_value(serde_json::Value::Object(fields))
        .expect("every job setting of the table is a field of the patch"))
}

/// A result's label: each value after its setting's short name, joined by `_` (`lr0.1_cutn64`);
/// empty without sweeps. Only letters, digits, `.` and `-` appear, so it is safe in a file name
/// on any system.
pub fn label(values: &[SweepValue]) -> String {
    let parts: Vec<String> = values
        .iter()
        .map(|v| {
            let short = settings::find_job_setting(&v.key).map_or(v.key.as_str(), |s| s.short());
            let safe: String = v
                .value
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            format!("{short}{safe}")
        })
        .collect();
    parts.join("_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> Vec<SweepValue> {
        pairs
            .iter()
            .map(|(key, value)| SweepValue {
                key: key.to_string(),
                value: value.to_string(),
            })
            .collect()
    }

    #[test]
    fn a_sweep_is_parsed_through_the_settings_table() {
        let lr = Sweep::parse("lr=0.05,0.10, 0.2").unwrap();
        assert_eq!(lr.key, "learning_rate");
        assert_eq!(lr.values, ["0.05", "0.1", "0.2"]);
        let optimiser = Sweep::parse("optimiser=adam,adamw").unwrap();
        assert_eq!(optimiser.values, ["adam", "adamw"]);
    }

    #[test]
    fn bad_sweeps_name_what_is_wrong() {
        let unknown = Sweep::parse("speed=1,2").unwrap_err().to_string();
        assert!(unknown.starts_with("sweep key 'speed' is not a job setting; known: "));
        assert!(unknown.contains("learning_rate (lr)") && unknown.contains("cutn"));
        assert!(
            !unknown.contains("precision"),
            "a worker's own choice: {unknown}"
        );
        assert_eq!(
            Sweep::parse("cutn=").unwrap_err().to_string(),
            "sweep cutn has an empty value; give one or more values, separated by ','"
        );
        assert!(matches!(
            Sweep::parse("cutn=32,,64"),
            Err(SweepError::EmptyValue { .. })
        ));
        assert_eq!(
            Sweep::parse("cutn=32,2000").unwrap_err().to_string(),
            "sweep cutn: setting `cutn` = 2000 is out of range: between 1 and 1024"
        );
        assert_eq!(
            Sweep::parse("lr=0.1,0.10").unwrap_err().to_string(),
            "sweep learning_rate gives the value 0.1 twice"
        );
        assert!(matches!(Sweep::parse("cutn"), Err(SweepError::Syntax(_))));
        let twice = [
            Sweep::parse("lr=0.1").unwrap(),
            Sweep::parse("learning-rate=0.2").unwrap(),
        ];
        assert_eq!(
            combinations(&twice, 100).unwrap_err().to_string(),
            "setting learning_rate is swept twice; give all its values in one --sweep"
        );
    }

    #[test]
    fn combinations_are_the_product_in_order() {
        let sweeps = [
            Sweep::parse("lr=0.05,0.1,0.2").unwrap(),
            Sweep::parse("cutn=32,64").unwrap(),
        ];
        let all = combinations(&sweeps, 100).unwrap();
        assert_eq!(all.len(), 6);
        assert_eq!(all[1], values(&[("learning_rate", "0.05"), ("cutn", "64")]));
        assert_eq!(label(&all[3]), "lr0.1_cutn64");
        let patched = patch(&all[3]).unwrap();
        assert_eq!((patched.learning_rate, patched.cutn), (Some(0.1), Some(64)));
        assert_eq!(combinations(&[], 1).unwrap(), vec![Vec::new()]);
        assert!(matches!(
            combinations(&sweeps, 5),
            Err(SweepError::TooMany { count: 6, max: 5 })
        ));
    }

    #[test]
    fn labels_are_safe_in_file_names() {
        let label = label(&values(&[("clip_model", "ViT-B/32"), ("augments", "Af")]));
        assert_eq!(label, "clip_modelViT-B-32_augmentsAf");
    }
}
