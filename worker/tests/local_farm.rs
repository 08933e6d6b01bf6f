//! `tessera up`, the farm on one machine, as a user runs it: the real `tessera` binary starting
//! the real coordinator and worker binaries. The generation models are tiny ones in the
//! official formats, installed under the catalogue's names; the upscaler is the real
//! Real-ESRGAN animevideo-v3 that the set-up installs.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tessera_proto::v1;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_tests::binary;

const UPSCALER: &str = "realesr-animevideov3-x4";

/// A models directory with the real upscaler and, when `generation`, the tiny CLIP and VQGAN
/// under the names of the farm's default models.
fn models(generation: bool) -> TempDir {
    let dir = TempDir::new().unwrap();
    for ext in ["param", "bin"] {
        let name = format!("{UPSCALER}.{ext}");
        std::fs::copy(common::models_dir().join(&name), dir.path().join(&name)).unwrap();
    }
    if generation {
        let tiny = common::tiny_generation_models();
        for (from, to) in [
            ("vit.pt", "ViT-B-32.pt"),
            ("vq.safetensors", "vqgan_imagenet_f16_16384.safetensors"),
            ("vq.yaml", "vqgan_imagenet_f16_16384.yaml"),
        ] {
            std::fs::copy(tiny.path().join(from), dir.path().join(to)).unwrap();
        }
    }
    dir
}

/// `tessera up` with a free port, the farm's files under `farm`, and `args`.
fn up(farm: &Path, models: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary("tessera").unwrap());
    command
        .args(["up", "--listen", "127.0.0.1:0", "--dir"])
        .arg(farm)
        .arg("--models")
        .arg(models)
        .args(args)
        .env_remove("TESSERA_COORDINATOR")
        .stdin(Stdio::null());
    command
}

fn run(mut command: Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "tessera up failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn manifest_files(out: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["file"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn up_renders_a_prompt_file_on_two_local_workers_and_brings_the_pictures_home() {
    let (models, scratch) = (models(true), TempDir::new().unwrap());
    let prompts = scratch.path().join("prompts.txt");
    std::fs::write(&prompts, "a red lighthouse\na pencil sketch of a castle\n").unwrap();
    let out = scratch.path().join("out");
    let mut command = up(
        &scratch.path().join("farm"),
        models.path(),
        &["--workers", "2"],
    );
    command
        .arg("--run")
        .arg(&prompts)
        .arg("-o")
        .arg(&out)
        .args(["--seeds", "2", "--size", "32x32", "--iterations", "3"])
        .args(["--upscale", UPSCALER]);
    let output = run(command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("with 2 worker(s) on cpu"), "{stderr}");
    let files = manifest_files(&out);
    assert_eq!(files.len(), 4, "{files:?}");
    for file in &files {
        let picture = image::open(out.join(file)).unwrap();
        assert_eq!((picture.width(), picture.height()), (128, 128), "{file}");
    }
    assert!(
        files[0].starts_with("0000-seed0-a-red-lighthouse"),
        "{files:?}"
    );
}

#[test]
fn without_generation_weights_up_says_how_to_get_them_and_still_upscales() {
    let (models, scratch) = (models(false), TempDir::new().unwrap());
    let prompts = scratch.path().join("prompts.txt");
    std::fs::write(&prompts, "a red lighthouse\n").unwrap();
    let picture = scratch.path().join("small.png");
    image::RgbImage::from_fn(24, 16, |x, y| {
        image::Rgb([(x * 10) as u8, (y * 15) as u8, 90])
    })
    .save(&picture)
    .unwrap();
    let out = scratch.path().join("out");
    let mut command = up(&scratch.path().join("farm"), models.path(), &[]);
    command
        .arg("--run")
        .arg(&prompts)
        .arg("--fallback-pictures")
        .arg(&picture)
        .arg("-o")
        .arg(&out)
        .args(["--upscale", UPSCALER]);
    let output = run(command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ViT-B/32 and vqgan_imagenet_f16_16384 not installed")
            && stderr.contains("scripts/setup.sh"),
        "{stderr}"
    );
    let files = manifest_files(&out);
    assert_eq!(files.len(), 1, "{files:?}");
    let upscaled = image::open(out.join(&files[0])).unwrap();
    assert_eq!((upscaled.width(), upscaled.height()), (96, 64));
}

/// A farm in the foreground: its coordinator's URL (read from the start-up line) and process.
struct Foreground {
    url: String,
    child: std::process::Child,
}

impl Foreground {
    fn start(farm: &Path, models: &Path) -> Foreground {
        let mut child = up(farm, models, &[])
            // The coordinator it starts reads this: short leases, so heartbeats (and the
            // progress the test waits for) come often.
            .env("TESSERA_LEASE_MS", "2000")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        let url = loop {
            let line = lines.next().expect("tessera up ended early").unwrap();
            if let Some(rest) = line.strip_prefix("tessera farm up: coordinator ") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Foreground { url, child }
    }

    /// `tessera ARGS` against this farm.
    fn tessera(&self, args: &[&str]) -> Output {
        let output = Command::new(binary("tessera").unwrap())
            .arg("--coordinator")
            .arg(&self.url)
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        output
    }

    /// SIGTERM, as a service manager stops it; it must drain and exit cleanly.
    fn stop(mut self) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: `kill` has no memory effects; the pid is our own live child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "tessera up did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "tessera up exited with {status}");
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_farm_stopped_mid_render_resumes_the_job_when_started_again_on_its_directory() {
    let (models, scratch) = (models(true), TempDir::new().unwrap());
    let farm_dir = scratch.path().join("farm");
    let prompts = scratch.path().join("prompts.txt");
    std::fs::write(&prompts, "a red lighthouse\n").unwrap();

    let farm = Foreground::start(&farm_dir, models.path());
    let submitted = farm.tessera(&[
        "--json",
        "submit",
        prompts.to_str().unwrap(),
        "--size",
        "32x32",
        "--iterations",
        "40",
        "--upscale",
        "none",
    ]);
    let job: serde_json::Value = serde_json::from_slice(&submitted.stdout).unwrap();
    let job = job["job_id"].as_str().unwrap().to_string();
    let task_id = format!("{job}.0.g");
    // Stop the farm once the render is under way; the drain checkpoints it into the state.
    let deadline = Instant::now() + Duration::from_secs(120);
    while task(&farm, &task_id).iteration < 5 {
        assert!(Instant::now() < deadline, "the render never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    farm.stop();

    let farm = Foreground::start(&farm_dir, models.path());
    let resumed_from = u64::from(task(&farm, &task_id).checkpoint_iteration);
    assert!(resumed_from >= 5, "checkpoint at {resumed_from}");
    let watched = farm.tessera(&["--json", "watch", &job]);
    let attempts: Vec<u64> = String::from_utf8_lossy(&watched.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["type"] == "progress" && e["attempt"] == 2)
        .map(|e| e["iteration"].as_u64().unwrap())
        .collect();
    // Progress goes out with heartbeats, so a quick finish may report none; any it reports
    // must not go back before the checkpoint (worker/tests/farm.rs checks the resumption).
    assert!(
        attempts.iter().all(|&i| i >= resumed_from),
        "the second farm went back before {resumed_from}: {attempts:?}"
    );
    assert_eq!(
        task(&farm, &task_id).attempt,
        2,
        "drained once, then finished"
    );
    let status = farm.tessera(&["--json", "status", &job]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["state"], "succeeded", "{status}");
    farm.stop();
}

/// The coordinator's record of a task (the CLI shows jobs, not tasks, so this asks over gRPC).
fn task(farm: &Foreground, task: &str) -> v1::TaskInfo {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = JobsClient::connect(farm.url.clone()).await.unwrap();
        let request = v1::GetTaskRequest {
            task_id: task.to_string(),
        };
        client.get_task(request).await.unwrap().into_inner()
    })
}

#[test]
fn a_second_farm_on_one_directory_is_refused_and_the_first_keeps_its_jobs() {
    let (models, scratch) = (models(false), TempDir::new().unwrap());
    let farm_dir = scratch.path().join("farm");
    let prompts = scratch.path().join("prompts.txt");
    std::fs::write(&prompts, "a red lighthouse\n").unwrap();

    let farm = Foreground::start(&farm_dir, models.path());
    let second = up(&farm_dir, models.path(), &["--workers", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    let in_use = format!(
        "the state directory {} is in use by tessera-coordinator",
        farm_dir.join("state").display()
    );
    assert!(stderr.contains(&in_use), "{stderr}");

    // This farm's workers have no generation weights: the job is queued for capacity.
    let submitted = farm.tessera(&[
        "--json",
        "submit",
        prompts.to_str().unwrap(),
        "--size",
        "32x32",
        "--upscale",
        "none",
        "--queue-anyway",
    ]);
    let job: serde_json::Value = serde_json::from_slice(&submitted.stdout).unwrap();
    let job = job["job_id"].as_str().unwrap().to_string();
    farm.stop();

    let farm = Foreground::start(&farm_dir, models.path());
    let status = farm.tessera(&["--json", "status", &job]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["job_id"], job, "{status}");
    farm.stop();
}
