//! `tessera submit`'s render settings as flags, made from the one table of settings
//! ([`tessera_core::settings`]): every setting a job can carry is a flag named after it
//! (`--learning-rate`, `--tv-weight`), with the table's help, the farm's default and the
//! table's range, so a setting added there is a flag here without touching this file.

use clap::{value_parser, Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use serde_json::{Map, Value};
use tessera_core::job::SettingsPatch;
use tessera_core::settings::{self, Describe, Range};

/// Job settings that `tessera submit` sets through a flag of another shape, so none is made
/// for them here: the picture's size is one `--size WxH`.
pub const SET_BY_OTHER_FLAGS: [(&str, &str); 2] = [("width", "size"), ("height", "size")];

/// The settings the user gave as flags; unset ones stay unset, so a prompt file's and the
/// farm's defaults apply.
#[derive(Clone, Debug, Default)]
pub struct SettingFlags {
    /// The flags given, as a job-level patch.
    pub patch: SettingsPatch,
}

/// The job settings that get a flag of their own.
fn flagged() -> impl Iterator<Item = &'static dyn Describe> {
    settings::ALL.into_iter().filter(|s| {
        s.surfaces().job && !SET_BY_OTHER_FLAGS.iter().any(|(name, _)| *name == s.name())
    })
}

/// The flag of `setting`: its name with dashes, its range checked by clap.
fn flag(setting: &'static dyn Describe) -> Arg {
    let help = settings::flag_help(setting.name(), true).expect("a setting of the table");
    let arg = Arg::new(setting.name())
        .long(setting.name().replace('_', "-"))
        .help(help)
        .action(ArgAction::Set)
        .help_heading("Render settings");
    match setting.range() {
        Range::Count { min, max } => arg
            .value_name("N")
            .value_parser(value_parser!(u32).range(i64::from(min)..=i64::from(max))),
        Range::Positive | Range::NonNegative => arg
            .value_name("X")
            .allow_negative_numbers(true)
            .value_parser(value_parser!(f64)),
        Range::Choice => arg.value_name("NAME"),
        Range::Any => arg.value_parser(value_parser!(bool)),
    }
}

impl Args for SettingFlags {
    fn augment_args(cmd: Command) -> Command {
        flagged().fold(cmd, |cmd, setting| cmd.arg(flag(setting)))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for SettingFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = Map::new();
        for setting in flagged() {
            let name = setting.name();
            let value = match setting.range() {
                Range::Count { .. } => matches.get_one::<u32>(name).map(|&n| Value::from(n)),
                Range::Positive | Range::NonNegative => {
                    matches.get_one::<f64>(name).map(|&x| Value::from(x))
                }
                Range::Choice => matches
                    .get_one::<String>(name)
                    .map(|s| Value::from(s.as_str())),
                Range::Any => matches.get_one::<bool>(name).map(|&b| Value::from(b)),
            };
            if let Some(value) = value {
                given.insert(name.to_string(), value);
            }
        }
        let patch = serde_json::from_value(Value::Object(given)).map_err(|e| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("a setting flag does not fit the job's settings: {e}"),
            )
        })?;
        Ok(SettingFlags { patch })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Probe {
        #[command(flatten)]
        flags: SettingFlags,
    }

    #[test]
    fn every_job_setting_is_a_flag_or_set_by_another_and_reaches_the_patch() {
        let probe = Probe::try_parse_from([
            "probe",
            "--learning-rate",
            "0.05",
            "--tv-weight",
            "0.5",
            "--cutn",
            "64",
            "--optimiser",
            "adamw",
            "--augments",
            "Af,Ji",
            "--clip-model",
            "ViT-B/16",
        ])
        .unwrap();
        let patch = probe.flags.patch;
        assert_eq!(patch.learning_rate, Some(0.05));
        assert_eq!(patch.tv_weight, Some(0.5));
        assert_eq!(patch.cutn, Some(64));
        assert_eq!(patch.optimiser.as_deref(), Some("adamw"));
        assert_eq!(patch.augments.as_deref(), Some("Af,Ji"));
        assert_eq!(patch.clip_model.as_deref(), Some("ViT-B/16"));
        assert_eq!(patch.iterations, None);

        // Every job setting of the table, flag or not, is a field of the patch (`from_value`
        // refuses unknown fields, so a table entry without a patch field fails here).
        for setting in settings::ALL.into_iter().filter(|s| s.surfaces().job) {
            let one = serde_json::json!({ setting.name(): null });
            serde_json::from_value::<SettingsPatch>(one)
                .unwrap_or_else(|e| panic!("{} is no field of the patch: {e}", setting.name()));
        }
    }

    #[test]
    fn ranges_are_checked_as_the_table_says() {
        let error = Probe::try_parse_from(["probe", "--cutn", "0"]).unwrap_err();
        assert!(
            error.to_string().contains("0 is not in 1..=1024"),
            "{error}"
        );
        let help = Probe::try_parse_from(["probe", "--help"])
            .unwrap_err()
            .to_string();
        assert!(help.contains("--checkpoint-every <N>"), "{help}");
        assert!(help.contains("[50]"), "the farm default is shown: {help}");
    }
}
