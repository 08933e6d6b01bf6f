//! The client calls tests make again and again through the Jobs service, each unwrapped: a
//! failing call fails the test where it is made.

use tessera_proto::v1;
use tessera_proto::v1::jobs_client::JobsClient;
use tonic::transport::Channel;

/// Submits `spec` and returns the job id.
pub async fn submit(client: &mut JobsClient<Channel>, spec: v1::JobSpec) -> String {
    let request = v1::SubmitJobRequest { spec: Some(spec) };
    client
        .submit_job(request)
        .await
        .unwrap()
        .into_inner()
        .job_id
}

/// The job's status.
pub async fn status(client: &mut JobsClient<Channel>, job: &str) -> v1::JobStatus {
    let request = v1::GetJobRequest { job_id: job.into() };
    client.get_job(request).await.unwrap().into_inner()
}

/// A task's details: state, attempts, expiries, errors.
pub async fn task(client: &mut JobsClient<Channel>, task: &str) -> v1::TaskInfo {
    let request = v1::GetTaskRequest {
        task_id: task.into(),
    };
    client.get_task(request).await.unwrap().into_inner()
}

/// The job's first 1000 results, in order.
pub async fn results(client: &mut JobsClient<Channel>, job: &str) -> Vec<v1::ResultInfo> {
    let request = v1::ListResultsRequest {
        job_id: job.into(),
        offset: 0,
        limit: 0,
    };
    client
        .list_results(request)
        .await
        .unwrap()
        .into_inner()
        .results
}
