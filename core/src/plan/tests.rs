use super::*;
use crate::job::*;
use crate::task::*;
use crate::tiles::{TilePlan, TileSpec};

fn request(source: JobSource) -> JobRequest {
    JobRequest {
        name: "test".into(),
        priority: 0,
        settings: SettingsPatch::default(),
        seeds: vec![1, 2],
        source,
        sweeps: Vec::new(),
    }
}

fn prompts(texts: &[&str]) -> JobSource {
    JobSource::Prompts(
        texts
            .iter()
            .map(|t| PromptEntry {
                text: t.to_string(),
                ..PromptEntry::default()
            })
            .collect(),
    )
}

fn plan(req: &JobRequest) -> Result<JobPlan, JobError> {
    plan_job(
        "j1",
        req,
        &Settings::farm_defaults(),
        &ModelCatalog::default(),
        &Limits::default(),
    )
}

fn image(name: &str, width: u32, height: u32) -> InputImage {
    InputImage {
        name: name.into(),
        artifact: ArtifactRef {
            key: format!("uploads/{name}"),
            size: 10,
            sha256: String::new(),
            width,
            height,
        },
    }
}

#[test]
fn prompt_jobs_plan_one_generate_task_per_prompt_and_seed() {
    let mut req = request(prompts(&["a cat", "a dog"]));
    let JobSource::Prompts(p) = &mut req.source else {
        unreachable!()
    };
    p[1].seeds = Some(vec![7, 8, 9]);
    let plan = plan(&req).unwrap();
    assert_eq!(plan.units.len(), 5);
    assert_eq!(plan.tasks.len(), 5);
    let seeds: Vec<_> = plan.units.iter().map(|u| u.seed.unwrap()).collect();
    assert_eq!(seeds, [1, 2, 7, 8, 9]);
    assert_eq!(plan.tasks[2].id, "j1.2.g");
    assert!(plan.tasks.iter().all(|t| t.kind == TaskKind::Generate));
    // 496 with 256-pixel tiles: 2x2 tiles and a stitch per picture.
    assert_eq!(plan.tasks[0].planned_tiles, 4);
    assert_eq!(plan.tasks[0].planned_stitches, 1);
    assert_eq!(
        plan.expected,
        KindCounts {
            generate: 5,
            upscale_tile: 20,
            stitch: 5
        }
    );
    assert!(!plan.tasks[0].is_final);
}

#[test]
fn overrides_apply_per_prompt_over_job_settings() {
    let text = r#"{"prompt": "a cat", "iterations": 20, "width": 256, "height": 128}
{"prompt": "a dog", "seeds": [5], "upscale_model": "none"}
"#;
    let mut req = request(JobSource::Prompts(parse_prompts_jsonl(text).unwrap()));
    req.settings.iterations = Some(300);
    req.settings.clip_model = Some("vit-b/16".into());
    let plan = plan(&req).unwrap();
    let first = &plan.units[0].settings;
    assert_eq!(
        (first.iterations, first.width, first.height),
        (20, 256, 128)
    );
    assert_eq!(first.clip_model, "ViT-B/16", "catalogue spelling is kept");
    let last = &plan.units[2].settings;
    assert_eq!((last.iterations, last.upscale.is_none()), (300, true));
    assert!(
        plan.tasks[2].is_final,
        "no upscale: the render is the result"
    );
    assert_eq!(plan.tasks[2].planned_tiles, 0);
}

#[test]
fn the_loop_s_choices_are_named_per_prompt_and_unknown_names_list_the_choices() {
    use crate::loop_options::{Augment, CutMethod, InitNoise, OptimiserKind, DEFAULT_AUGMENTS};
    let text = r#"{"prompt": "a cat", "optimiser": "AdamW", "cut_method": "original", "augments": "Af, erasing", "noise_fac": 0.25, "change_prompt_every": 40, "init_noise": "gradient"}
{"prompt": "a dog", "augments": ""}
"#;
    let mut req = request(JobSource::Prompts(parse_prompts_jsonl(text).unwrap()));
    req.settings.optimiser = Some("rmsprop".into());
    let plan = plan(&req).unwrap();
    let first = &plan.units[0].settings;
    assert_eq!(
        (first.optimiser, first.cut_method, first.augments.clone()),
        (
            OptimiserKind::AdamW,
            CutMethod::Original,
            vec![Augment::Affine, Augment::Erasing]
        )
    );
    assert_eq!(
        (first.noise_fac, first.change_prompt_every, first.init_noise),
        (0.25, 40, Some(InitNoise::Gradient))
    );
    let second = &plan.units[2].settings;
    assert_eq!(second.optimiser, OptimiserKind::RMSprop, "the job's choice");
    assert_eq!((second.augments.len(), second.init_noise), (0, None));
    assert_eq!(Settings::farm_defaults().augments, DEFAULT_AUGMENTS);

    for (line, expected) in [
        (
            r#"{"prompt": "a", "optimiser": "sgd"}"#,
            "optimiser 'sgd' is not known; choose from adam, adamw, adagrad, rmsprop",
        ),
        (
            r#"{"prompt": "a", "augments": "affine,blur"}"#,
            "augments 'blur' is not known; choose from affine, perspective, jitter, erasing",
        ),
        (
            r#"{"prompt": "a", "noise_fac": -1}"#,
            "noise_fac = -1 is out of range",
        ),
    ] {
        let req = request(JobSource::Prompts(parse_prompts_jsonl(line).unwrap()));
        let message = plan_req_msg(&req);
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn jsonl_errors_name_the_line() {
    let cases = [
        (
            "{\"prompt\": \"a\"}\n\n{\"prompt\": 3}",
            3,
            "must be a string",
        ),
        ("{\"prompt\": \"a\"}\nnot json", 2, "expected"),
        ("{\"seeds\": [1]}", 1, "missing \"prompt\""),
        (
            "{\"prompt\": \"a\", \"iteratons\": 3}",
            1,
            "unknown field `iteratons`",
        ),
        (
            "{\"prompt\": \"a\", \"seeds\": [-1]}",
            1,
            "\"seeds\" must be",
        ),
        ("[1]", 1, "expected a prompt"),
    ];
    for (text, line, needle) in cases {
        let err = parse_prompts_jsonl(text).unwrap_err();
        assert!(
            matches!(err, JobError::Jsonl { line: l, .. } if l == line),
            "{text}: {err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("line {line}")) && msg.contains(needle),
            "{msg}"
        );
    }
}

#[test]
fn text_prompts_skip_blank_and_comment_lines_and_keep_line_numbers() {
    let entries = parse_prompts_text("# batch\na cat\n\n  a dog  \n").unwrap();
    let got: Vec<_> = entries.iter().map(|e| (e.text.as_str(), e.line)).collect();
    assert_eq!(got, [("a cat", 2), ("a dog", 4)]);
}

#[test]
fn invalid_jobs_are_refused_with_what_to_fix() {
    let check = |req: JobRequest, needle: &str| {
        let msg = plan(&req).unwrap_err().to_string();
        assert!(msg.contains(needle), "expected '{needle}' in: {msg}");
    };
    check(request(prompts(&[])), "the job has no prompts");
    let mut req = request(prompts(&["a"]));
    req.settings.width = Some(500);
    check(req, "width 500 is not a multiple of 16: use 496 or 512");
    let mut req = request(prompts(&["a"]));
    req.settings.vqgan_model = Some("vqgan_nope".into());
    check(
        req,
        "unknown VQGAN model 'vqgan_nope'; known: vqgan_imagenet_f16_16384",
    );
    let mut req = request(prompts(&["a"]));
    req.settings.iterations = Some(10_001);
    check(req, "too many iterations: 10001, the limit is 10000");
    let text: Vec<String> = (0..10_001).map(|i| format!("p{i}")).collect();
    let refs: Vec<&str> = text.iter().map(String::as_str).collect();
    check(
        request(prompts(&refs)),
        "too many prompts: 10001, the limit is 10000",
    );
    let mut req = request(JobSource::Prompts(parse_prompts_text("a\nb||c\n").unwrap()));
    req.seeds = vec![];
    check(req, "line 2: text prompt 2");
    let mut req = request(JobSource::Prompts(
        parse_prompts_jsonl("{\"prompt\":\"a\"}\n{\"prompt\":\"b\",\"upscale_model\":\"x9\"}")
            .unwrap(),
    ));
    req.seeds = vec![3];
    check(req, "line 2: unknown upscale model 'x9'");
    let mut req = request(prompts(&["a"]));
    req.settings.upscale_scale = Some(2);
    check(req, "upscale_scale = 2 is out of range: it must be 4");
    let mut req = request(prompts(&["a"]));
    req.settings.tile = Some(8);
    check(req, "tile size 8 is too small");
    let mut req = request(prompts(&["a"]));
    req.seeds = (0..1001).collect();
    check(req, "too many seeds per prompt: 1001");
}

#[test]
fn results_limit_counts_prompts_times_seeds() {
    let limits = Limits {
        max_results: 5,
        ..Limits::default()
    };
    let req = request(prompts(&["a", "b", "c"]));
    let err = plan_job(
        "j",
        &req,
        &Settings::farm_defaults(),
        &ModelCatalog::default(),
        &limits,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "too many results (prompts x sweeps x seeds): 6, the limit is 5"
    );
}

#[test]
fn sweeps_make_every_prompt_at_every_combination_labelled_and_winning_over_the_line() {
    let mut req = request(prompts(&["a cat", "a dog"]));
    req.sweeps = vec![
        crate::sweep::Sweep::parse("lr=0.05,0.2").unwrap(),
        crate::sweep::Sweep::parse("cutn=16,64").unwrap(),
    ];
    let JobSource::Prompts(p) = &mut req.source else {
        unreachable!()
    };
    p[1].settings.cutn = Some(8);
    p[1].settings.iterations = Some(7);
    let plan = plan(&req).unwrap();
    // 2 prompts x 4 combinations x 2 seeds, prompt first, then the sweeps, then the seeds.
    assert_eq!(plan.units.len(), 16);
    assert_eq!(plan.tasks.len(), 16);
    let unit = &plan.units[11];
    assert_eq!((unit.prompt_index, unit.seed), (Some(1), Some(2)));
    assert_eq!(crate::sweep::label(&unit.sweep), "lr0.05_cutn64");
    assert_eq!(unit.settings.learning_rate, 0.05);
    assert_eq!(
        unit.settings.cutn, 64,
        "the sweep wins over the line's cutn"
    );
    assert_eq!(
        unit.settings.iterations, 7,
        "the line's other settings stay"
    );
    let TaskSpec::Generate { settings, .. } = &plan.tasks[11].spec else {
        unreachable!()
    };
    assert_eq!(settings, &unit.settings);

    // A sweep value the limits refuse names the line and the combination.
    req.sweeps = vec![crate::sweep::Sweep::parse("iterations=10,20000").unwrap()];
    assert_eq!(
        plan_req_msg(&req),
        "prompt 1, sweep iterations20000: too many iterations: 20000, the limit is 10000"
    );
    // The product counts against the results limit before it is made.
    req.sweeps = vec![
        crate::sweep::Sweep::parse("cutn=1,2,3,4,5,6,7,8,9,10").unwrap(),
        crate::sweep::Sweep::parse("iterations=1,2,3,4,5,6,7,8,9,10").unwrap(),
    ];
    let few = Limits {
        max_results: 300,
        ..Limits::default()
    };
    let defaults = Settings::farm_defaults();
    let error = plan_job("j", &req, &defaults, &ModelCatalog::default(), &few).unwrap_err();
    assert_eq!(
        error.to_string(),
        "too many results (prompts x sweeps x seeds): 400, the limit is 300"
    );
    req.sweeps
        .push(crate::sweep::Sweep::parse("lr=1,2,3,4").unwrap());
    let error = plan_job("j", &req, &defaults, &ModelCatalog::default(), &few).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the sweeps make 400 combinations or more; a job has at most 300 results"
    );
    // An upscale-only job has nothing to sweep.
    let mut upscale = request(JobSource::Images(vec![image("a.png", 64, 64)]));
    upscale.sweeps = vec![crate::sweep::Sweep::parse("cutn=1,2").unwrap()];
    assert!(plan_req_msg(&upscale).contains("no render settings to sweep"));
}

#[test]
fn upscale_only_jobs_cut_each_picture_into_tiles_and_a_stitch() {
    let req = request(JobSource::Images(vec![
        image("big.png", 600, 300),
        image("small.png", 100, 64),
    ]));
    let plan = plan(&req).unwrap();
    assert!(plan.upscale_only);
    // 600x300 at 256: 3x2 tiles and a stitch; 100x64: one tile, which is the result.
    assert_eq!(
        plan.expected,
        KindCounts {
            generate: 0,
            upscale_tile: 7,
            stitch: 1
        }
    );
    let stitch = plan
        .tasks
        .iter()
        .find(|t| t.kind == TaskKind::Stitch)
        .unwrap();
    assert_eq!((stitch.id.as_str(), stitch.waiting), ("j1.0.s", 6));
    let tiles: Vec<_> = plan.tasks.iter().filter(|t| t.unit == 0).collect();
    assert!(tiles[..6]
        .iter()
        .all(|t| t.parent.as_deref() == Some("j1.0.s") && !t.is_final));
    let single = plan.tasks.iter().find(|t| t.unit == 1).unwrap();
    assert!(single.is_final && single.parent.is_none());
    let mut req = request(JobSource::Images(vec![image("x.png", 10, 10)]));
    req.settings.upscale_model = Some("none".into());
    assert!(plan_req_msg(&req).contains("an upscale model for an upscale-only job"));
    let req = request(JobSource::Images(vec![image("huge.png", 5000, 5000)]));
    assert!(plan_req_msg(&req).contains("input image 'huge.png': 5000x5000 pixels"));
}

fn plan_req_msg(req: &JobRequest) -> String {
    plan(req).unwrap_err().to_string()
}

#[test]
fn a_generated_picture_is_planned_into_tiles_with_the_tile_geometry() {
    let plan = plan(&request(prompts(&["a cat"]))).unwrap();
    let task = &plan.tasks[0];
    let output = ArtifactRef {
        key: "jobs/j1/j1.0.g/1/out.png".into(),
        size: 3,
        sha256: "00".into(),
        width: 496,
        height: 496,
    };
    let finished = FinishedTask {
        id: &task.id,
        job: &task.job,
        unit: task.unit,
        spec: &task.spec,
        trace: &task.trace,
    };
    let follow = plan_followups(&finished, &output).unwrap();
    assert_eq!(
        follow.len() as u32,
        task.planned_tiles + task.planned_stitches
    );
    let tile_plan = TilePlan::new(496, 496, 4, TileSpec::default()).unwrap();
    for (k, tile) in tile_plan.tiles.iter().enumerate() {
        let spec = &follow[k].spec;
        let rects = spec.upscale_tile().unwrap().unwrap();
        assert_eq!(rects.input, tile.input());
        assert_eq!(rects.output, tile.output(4));
        let (w, h) = spec.output_size().unwrap();
        let contribution = tile.output(4);
        assert_eq!((w, h), (contribution.width, contribution.height));
        let TaskSpec::UpscaleTile { source, .. } = spec else {
            panic!("not a tile: {spec:?}")
        };
        assert_eq!(source, &output);
    }
    assert_eq!(follow[4].spec.output_size().unwrap(), (1984, 1984));
    let wrong = ArtifactRef {
        width: 480,
        ..output
    };
    assert_eq!(
        plan_followups(&finished, &wrong).unwrap_err().to_string(),
        "task j1.0.g produced a 480x496 picture, expected 496x496"
    );
}

#[test]
fn requirements_round_trip_through_the_queue_name_and_match_capabilities() {
    let plan = plan(&request(prompts(&["a cat"]))).unwrap();
    let req = plan.tasks[0].spec.requirements().unwrap();
    assert_eq!(
        req.class_key(),
        format!(
            "generate|246016||vit-b/32,vqgan-imagenet-f16-16384|496|{}",
            req.iterations
        )
    );
    // Queues stored before sides and iterations were in the name still read, unlimited by them.
    let old = Requirements::from_class_key("generate|246016||vit-b/32,vqgan-imagenet-f16-16384");
    assert_eq!(
        old,
        Some(Requirements {
            side: 0,
            iterations: 0,
            ..req.clone()
        })
    );
    assert_eq!(Requirements::from_class_key("generate|1||m|2"), None);
    assert_eq!(
        Requirements::from_class_key(&req.class_key()),
        Some(req.clone())
    );
    let caps = Capabilities {
        kinds: vec![TaskKind::Generate],
        models: vec!["ViT-B/32".into(), "vqgan_imagenet_f16_16384".into()],
        device: "cuda:0".into(),
        ..Capabilities::default()
    }
    .normalised()
    .unwrap();
    assert!(req.satisfied_by(&caps));
    let without = |f: &dyn Fn(&mut Capabilities)| {
        let mut c = caps.clone();
        f(&mut c);
        req.satisfied_by(&c)
    };
    assert!(!without(&|c| c.kinds = vec![TaskKind::Stitch]));
    assert!(!without(&|c| c.models.pop().map(|_| ()).unwrap()));
    assert!(!without(&|c| c.max_pixels = 496 * 495));
    assert!(without(&|c| c.max_pixels = 496 * 496));
    assert!(!without(&|c| c.max_side = 480));
    assert!(without(&|c| c.max_side = 496));
    assert!(!without(&|c| c.max_iterations = req.iterations - 1));
    assert!(without(&|c| c.max_iterations = req.iterations));
    let mut on = req.clone();
    on.device = "cuda".into();
    assert!(on.satisfied_by(&caps));
    on.device = "cuda:1".into();
    assert!(!on.satisfied_by(&caps));
    on.device = "cud".into();
    assert!(!on.satisfied_by(&caps), "a device kind matches whole words");
}

#[test]
fn sizes_parse_and_job_of_task_splits_ids() {
    assert_eq!(parse_size("496x320").unwrap(), (496, 320));
    assert_eq!(
        parse_size("496").unwrap_err().to_string(),
        "size '496' is not WIDTHxHEIGHT, for example 496x496"
    );
    assert_eq!(job_of_task("abc.3.t2"), "abc");
}

#[test]
fn task_specs_round_trip_through_json() {
    let plan = plan(&request(JobSource::Images(vec![image("a.png", 300, 300)]))).unwrap();
    for task in plan.tasks {
        let json = serde_json::to_string(&task).unwrap();
        assert_eq!(serde_json::from_str::<NewTask>(&json).unwrap(), task);
    }
}

#[test]
fn prompt_file_with_padding_beyond_any_picture_plans() {
    // `"tile_pad": 4294967295` overflowed planning the tiles (it panicked the prompts_jsonl
    // fuzz target).
    let entries = parse_prompts_jsonl("{\"prompt\": \"x\", \"tile_pad\": 4294967295}").unwrap();
    let plan = plan(&request(JobSource::Prompts(entries))).unwrap();
    assert_eq!(plan.expected.get(TaskKind::Generate), 2);
}

#[test]
fn names_and_prompts_shown_to_people_are_bounded_and_free_of_control_characters() {
    let check = |req: JobRequest, needle: &str| {
        let msg = plan_req_msg(&req);
        assert!(msg.contains(needle), "expected '{needle}' in: {msg}");
    };
    let mut req = request(prompts(&["a"]));
    req.name = "n".repeat(MAX_NAME_CHARS + 1);
    check(req, "the job name has 256 characters; the limit is 255");
    let mut req = request(prompts(&["a"]));
    req.name = "ok\u{1b}[2J".into();
    check(
        req,
        "the job name holds the control character \\u{1b} at character 3",
    );
    check(
        request(prompts(&["a cat", "a\0dog"])),
        "prompt 2: the prompt holds the control character \\u{0} at character 2",
    );
    check(
        request(JobSource::Images(vec![image("a\nb.png", 10, 10)])),
        "image 1: the image name holds the control character \\u{a}",
    );
    let mut req = request(prompts(&["a"]));
    req.name = "tabs\tare fine, and so is ünïcödé ✓".into();
    plan(&req).unwrap();
}

#[test]
fn a_seed_given_twice_is_refused_for_the_job_and_for_one_prompt() {
    let mut req = request(prompts(&["a"]));
    req.seeds = vec![3, 4, 3];
    assert!(plan_req_msg(&req).contains("seed 3 is given twice"));
    let mut req = request(JobSource::Prompts(
        parse_prompts_jsonl("{\"prompt\":\"a\",\"seeds\":[9,9]}").unwrap(),
    ));
    req.seeds = vec![1];
    assert!(plan_req_msg(&req).contains("line 1: seed 9 is given twice"));
}

#[test]
fn an_upscale_only_job_is_not_held_to_the_render_side_limit() {
    let limits = Limits {
        max_side: 64,
        max_input_pixels: 48 * 48,
        ..Limits::default()
    };
    let plan_with = |req: &JobRequest| {
        plan_job(
            "j",
            req,
            &Settings::farm_defaults(),
            &ModelCatalog::default(),
            &limits,
        )
    };
    let crop = request(JobSource::Images(vec![image("crop48.png", 48, 48)]));
    assert!(plan_with(&crop).unwrap().upscale_only);
    let too_big = request(JobSource::Images(vec![image("crop64.png", 64, 64)]));
    let msg = plan_with(&too_big).unwrap_err().to_string();
    assert!(
        msg.contains("it must have between 1 and 2304 pixels"),
        "{msg}"
    );
    let render = request(prompts(&["a"]));
    let msg = plan_with(&render).unwrap_err().to_string();
    assert!(msg.contains("width = 496 is out of range"), "{msg}");
}

#[test]
fn prompt_files_read_as_their_users_meant_or_are_refused_saying_why() {
    let texts = |entries: Vec<PromptEntry>| -> Vec<String> {
        entries.into_iter().map(|e| e.text).collect()
    };
    let bom = "\u{feff}# a comment\na cat\n";
    assert_eq!(texts(parse_prompts_text(bom).unwrap()), ["a cat"]);
    let pretty = "[\n  \"a cat\",\n  {\"prompt\": \"a dog\", \"seeds\": [4]}\n]\n";
    for as_text in [pretty, "{\"prompt\": \"a cat\"}\n"] {
        let msg = parse_prompts_text(as_text).unwrap_err().to_string();
        assert!(
            msg.contains("reads as JSON") && msg.contains(".jsonl"),
            "{msg}"
        );
    }
    let entries = parse_prompts_json(&format!("\u{feff}{pretty}")).unwrap();
    assert_eq!(entries[1].seeds, Some(vec![4]));
    assert_eq!(texts(entries), ["a cat", "a dog"]);
    assert_eq!(
        texts(parse_prompts_jsonl("\u{feff}{\"prompt\": \"a\"}\n\"b\"\n").unwrap()),
        ["a", "b"]
    );
    let refused = [
        (
            parse_prompts_jsonl("{\"prompt\": \"a\"}\n{\"prompt\": \"a\", \"prompt\": \"b\"}"),
            "prompts JSONL line 2: \"prompt\" is given twice",
        ),
        (
            parse_prompts_jsonl("{\"prompt\": \"a\", \"iterations\": \"many\"}"),
            "prompts JSONL line 1: \"iterations\": invalid type: string \"many\"",
        ),
        (
            parse_prompts_json("[\"a\", {\"prompt\": \"b\", \"cutn\": -1}]"),
            "prompts JSON: element 2: \"cutn\": invalid value",
        ),
        (
            parse_prompts_json("[\"a\",\n {\"prompt\": \"b\", \"cutn\": 1, \"cutn\": 2}]"),
            "\"cutn\" is given twice; give each field once at line 2",
        ),
        (
            parse_prompts_json("{\"prompt\": \"a\"}"),
            "prompts JSON: invalid type: map, expected a sequence",
        ),
    ];
    for (parsed, needle) in refused {
        let msg = parsed.unwrap_err().to_string();
        assert!(msg.contains(needle), "expected '{needle}' in: {msg}");
    }
}
