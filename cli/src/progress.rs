//! Progress bars of a watched job: one for the job's results and one per running task with
//! its iteration, loss and ETA. Bars draw on standard error only when it is a terminal, so
//! piped output stays clean; the final summary always goes to standard output.

use std::collections::{HashMap, HashSet};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tessera_proto::v1;
use tessera_proto::v1::job_event::Event;

use crate::output::{job_state, shown, task_kind};

/// The bars of one job.
pub struct Bars {
    multi: MultiProgress,
    job: ProgressBar,
    job_id: String,
    tasks: HashMap<String, ProgressBar>,
    done: HashSet<u32>,
}

impl Bars {
    /// Bars for `status`'s job, its results bar starting at what is already done.
    pub fn new(status: &v1::JobStatus) -> Bars {
        let multi = MultiProgress::new();
        let job = multi.add(ProgressBar::new(status.results_total));
        job.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} results {msg}")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        job.set_prefix(format!("job {}", status.job_id));
        Bars {
            multi,
            job,
            job_id: status.job_id.clone(),
            tasks: HashMap::new(),
            done: HashSet::new(),
        }
    }

    /// Updates the bars with one event.
    pub fn show(&mut self, event: &v1::JobEvent) {
        match &event.event {
            Some(Event::TaskStarted(e)) => {
                let bar = self.multi.add(ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template(
                        "  {prefix} [{bar:20}] {pos}/{len} {msg} eta {eta}",
                    )
                    .expect("the template is valid")
                    .progress_chars("=> "),
                );
                bar.set_prefix(format!("#{} {}", e.result_index, task_kind(e.kind())));
                if let Some(old) = self.tasks.insert(e.task_id.clone(), bar) {
                    self.multi.remove(&old);
                }
            }
            Some(Event::Progress(e)) => {
                if let Some(bar) = self.tasks.get(&e.task_id) {
                    bar.set_length(u64::from(e.iterations));
                    bar.set_position(u64::from(e.iteration));
                    bar.set_message(e.loss.map_or(String::new(), |l| format!("loss {l:.4}")));
                }
            }
            Some(Event::TaskDone(e)) => {
                self.end_task(&e.task_id);
                if e.is_result && self.done.insert(e.result_index) {
                    self.job.inc(1);
                }
            }
            Some(Event::TaskFailed(e)) => {
                self.end_task(&e.task_id);
                let retry = if e.will_retry { ", retrying" } else { "" };
                self.note(&format!(
                    "task {} failed{retry}: {}",
                    e.task_id,
                    shown(&e.error)
                ));
            }
            Some(Event::TaskRequeued(e)) => self.end_task(&e.task_id),
            Some(Event::Preview(_)) | Some(Event::JobDone(_)) | None => {}
        }
    }

    /// Prints a line above the bars (on standard error).
    pub fn note(&self, line: &str) {
        self.multi.suspend(|| eprintln!("{line}"));
    }

    /// Clears the bars and prints the job's outcome on standard output.
    pub fn finish(&self, done: &v1::JobDone) {
        for bar in self.tasks.values() {
            self.multi.remove(bar);
        }
        self.job.set_position(done.results_done);
        self.job.finish_and_clear();
        println!(
            "job {} {}: {} result(s) done, {} failed",
            self.job_id,
            job_state(done.state()),
            done.results_done,
            done.results_failed
        );
    }

    fn end_task(&mut self, task: &str) {
        if let Some(bar) = self.tasks.remove(task) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }
}
