//! Every place a render setting lives, checked against the one table of settings
//! (`tessera_core::settings`): the job model and its patch, the wire message, the loop's
//! settings, `tessera-worker render`'s flags and the farm worker's flags. A setting added to one
//! of them and not to the table (or the other way round) fails here, naming the setting and the
//! place; so does a default written somewhere instead of read from the table.
//! (`tessera submit`'s flags are made from the table: see `cli/src/setting_flags.rs`.)

use std::collections::BTreeSet;

use clap::{Args, Command};
use serde_json::Value;
use tessera_core::job::{Settings as JobSettings, SettingsPatch};
use tessera_core::prompt::PromptSpec;
use tessera_core::settings::{self, Describe};
use tessera_nets::generate::Settings as LoopSettings;
use tessera_worker::farm::FarmArgs;
use tessera_worker::render_cmd::{RenderArgs, SET_BY_OTHER_FLAGS};

/// Fields of a job's settings that are not render settings: where the picture goes next.
const JOB_ONLY: [&str; 2] = ["upscale", "device"];
/// Fields of a patch (and the wire message) that are not render settings.
const PATCH_ONLY: [&str; 6] = [
    "upscale_model",
    "upscale_scale",
    "tile",
    "tile_pad",
    "tile_overlap",
    "device",
];
/// Fields of the loop's settings that are not settings but what is rendered.
const LOOP_ONLY: [&str; 2] = ["prompts", "seed"];
/// `tessera-worker render` flags that set no setting of the table.
const RENDER_FLAGS_NOT_SETTINGS: [&str; 8] = [
    "prompt",
    "image_prompt",
    "noise_prompt",
    "init_image",
    "seed",
    "resume",
    "device",
    "out",
];

fn names(
    filter: impl Fn(&dyn Describe) -> bool,
    name: fn(&dyn Describe) -> &'static str,
) -> BTreeSet<String> {
    settings::ALL
        .into_iter()
        .filter(|s| filter(*s))
        .map(|s| name(s).to_string())
        .collect()
}

fn with(mut set: BTreeSet<String>, extra: &[&str]) -> BTreeSet<String> {
    set.extend(extra.iter().map(|s| s.to_string()));
    set
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect()
}

fn assert_same(place: &str, found: BTreeSet<String>, expected: BTreeSet<String>) {
    let missing: Vec<_> = expected.difference(&found).collect();
    let unknown: Vec<_> = found.difference(&expected).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{place} drifted from tessera_core::settings: lacks {missing:?}, has {unknown:?} \
         that the table does not list"
    );
}

/// Field names of `message Settings` in the .proto file.
fn wire_fields() -> BTreeSet<String> {
    let proto = include_str!("../../proto/tessera/v1/tessera.proto");
    let body = proto
        .split("message Settings {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("the proto has a Settings message");
    body.lines()
        .map(str::trim)
        .filter(|line| line.starts_with("optional "))
        .map(|line| {
            line.split_whitespace()
                .nth(2)
                .expect("optional TYPE NAME = N;")
                .to_string()
        })
        .collect()
}

fn arg_ids(command: Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect()
}

#[test]
fn every_place_holds_exactly_the_settings_of_the_table() {
    let job = |s: &dyn Describe| s.surfaces().job;
    let render = |s: &dyn Describe| s.surfaces().render;
    let job_names = names(job, |s| s.name());

    let farm = serde_json::to_value(JobSettings::farm_defaults()).unwrap();
    assert_same(
        "the job's settings",
        keys(&farm),
        with(job_names.clone(), &JOB_ONLY),
    );

    let patch = serde_json::to_value(SettingsPatch::default()).unwrap();
    let patch_names = with(job_names.clone(), &PATCH_ONLY);
    assert_same(
        "the job's settings patch",
        keys(&patch),
        patch_names.clone(),
    );
    assert_same("the wire's Settings message", wire_fields(), patch_names);

    let loop_settings = LoopSettings::new(PromptSpec::parse("a cat", "", "").unwrap(), 0);
    let loop_value = serde_json::to_value(&loop_settings).unwrap();
    assert_same(
        "the loop's settings",
        keys(&loop_value),
        with(names(render, |s| s.loop_name()), &LOOP_ONLY),
    );

    let flags = arg_ids(RenderArgs::augment_args(Command::new("render")));
    let mut expected = BTreeSet::new();
    for setting in settings::ALL.into_iter().filter(|s| render(*s)) {
        let flag = SET_BY_OTHER_FLAGS
            .iter()
            .find(|(name, _)| *name == setting.name())
            .map_or(setting.name(), |(_, flag)| flag);
        expected.insert(flag.to_string());
    }
    assert_same(
        "tessera-worker render's flags",
        flags,
        with(expected, &RENDER_FLAGS_NOT_SETTINGS),
    );

    let worker_flags = arg_ids(FarmArgs::augment_args(Command::new("worker")));
    for setting in settings::ALL.into_iter().filter(|s| s.surfaces().worker) {
        let id = format!("farm_{}", setting.name());
        assert!(
            worker_flags.contains(&id),
            "the worker has no flag for {}: {worker_flags:?}",
            setting.name()
        );
    }
}

#[test]
fn the_job_s_and_the_loop_s_defaults_are_the_table_s() {
    let farm = serde_json::to_value(JobSettings::farm_defaults()).unwrap();
    let alone = LoopSettings::new(PromptSpec::parse("a cat", "", "").unwrap(), 0);
    let alone = serde_json::to_value(&alone).unwrap();
    for setting in settings::ALL
        .into_iter()
        .filter(|s| s.surfaces().job && s.surfaces().render)
    {
        if setting.name() == "init_noise" {
            // The loop's `init` also holds init images; both say "random tokens" by default.
            assert_eq!(farm["init_noise"], Value::Null);
            assert_eq!(alone["init"], Value::from("RandomTokens"));
            continue;
        }
        let (job_value, loop_value) = (&farm[setting.name()], &alone[setting.loop_name()]);
        if setting.default_text() == setting.farm_default_text() {
            assert_eq!(job_value, loop_value, "{} defaults differ", setting.name());
        } else {
            assert_eq!(
                job_value.to_string(),
                setting.farm_default_text(),
                "{}",
                setting.name()
            );
            assert_eq!(
                loop_value.to_string(),
                setting.default_text(),
                "{}",
                setting.name()
            );
        }
    }
}

#[test]
fn settings_written_before_the_newest_setting_still_load() {
    // A job's settings and a render's settings as main wrote them before `tv_weight` existed
    // (stored in Redis, the embedded journal, PNG chunks and checkpoints).
    let job = r#"{"clip_model":"ViT-B/32","vqgan_model":"vqgan_imagenet_f16_16384","width":496,
        "height":496,"iterations":500,"cutn":32,"cut_pow":1.0,"learning_rate":0.1,
        "init_weight":0.0,"optimiser":"Adam","cut_method":"Latest",
        "augments":["Affine","Perspective","Jitter","Erasing"],"noise_fac":0.1,
        "change_prompt_every":0,"init_noise":null,"checkpoint_every":50,"preview_every":50,
        "upscale":null,"device":""}"#;
    let job: JobSettings = serde_json::from_str(job).unwrap();
    assert_eq!(job.tv_weight, 0.0);
    let render = serde_json::to_value(LoopSettings::new(
        PromptSpec::parse("a cat", "", "").unwrap(),
        7,
    ))
    .unwrap();
    let mut older = render.as_object().unwrap().clone();
    older.remove("tv_weight");
    let older: LoopSettings = serde_json::from_value(Value::Object(older)).unwrap();
    assert_eq!(older.tv_weight, 0.0);
    assert_eq!(older.seed, 7);
}
