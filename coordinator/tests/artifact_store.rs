//! The artifact store's conformance suite, run on every kind of store the coordinator opens: a
//! local directory and S3 (a real S3 API, moto's server on loopback, configured by `AWS_*`
//! variables as the gpu-cluster overlay configures it). Both must store, describe, read whole
//! and from an offset, check, measure and delete alike, and put large artifacts in parts
//! (multipart uploads, which S3 shows in the object's ETag). S3's own failures are named: a
//! missing bucket and refused credentials at start, and an endpoint that stops answering.

use bytes::Bytes;
use tessera_coordinator::store::{ArtifactStore, StoreError, MULTIPART_ABOVE};
use tessera_core::task::sha256_hex;
use tessera_tests::s3::{S3Server, BUCKET};
use tokio_stream::StreamExt;

/// Largest upload the suite's stores take.
const MAX_BYTES: u64 = 64 << 20;

/// A store on `server` under `prefix`, with its `AWS_*` variables.
fn s3_store(server: &S3Server, bucket: &str) -> Result<ArtifactStore, StoreError> {
    ArtifactStore::open_with(&format!("s3://{bucket}/farm"), MAX_BYTES, server.env())
}

/// Bytes that do not compress or repeat, so a part boundary that loses or repeats bytes is
/// caught by the checksum.
fn varied(len: usize) -> Bytes {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// A PNG of `width`x`height`.
fn png(width: u32, height: u32) -> Bytes {
    let mut out = Vec::new();
    image::RgbImage::new(width, height)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out.into()
}

/// What every store must do. Returns the key of the large artifact it stored in parts.
async fn conforms(store: &ArtifactStore) -> String {
    // A picture is described as it is stored, and reads back whole and from an offset.
    let picture = png(20, 12);
    let a = store
        .put("jobs/j/t/1/out.png", picture.clone())
        .await
        .unwrap();
    assert_eq!((a.width, a.height), (20, 12));
    assert_eq!(
        (a.size, a.sha256.as_str()),
        (picture.len() as u64, sha256_hex(&picture).as_str())
    );
    assert_eq!(store.read(&a.key).await.unwrap(), picture);
    assert_eq!(store.size(&a.key).await.unwrap(), picture.len() as u64);
    let (size, stream) = store.read_from(&a.key, 7).await.unwrap();
    let rest: Vec<Bytes> = stream.map(|c| c.unwrap()).collect().await;
    assert_eq!(
        (size, rest.concat()),
        (picture.len() as u64, picture[7..].to_vec())
    );
    let (_, past_end) = store.read_from(&a.key, size).await.unwrap();
    assert_eq!(past_end.collect::<Vec<_>>().await.len(), 0);
    assert!(store.intact(&a).await.unwrap());

    // Overwritten, it is no longer the artifact recorded; deleted, it is gone (twice is fine).
    store
        .put(&a.key, Bytes::from_static(b"other"))
        .await
        .unwrap();
    assert!(!store.intact(&a).await.unwrap());
    store.delete(&a.key).await.unwrap();
    store.delete(&a.key).await.unwrap();
    assert!(!store.intact(&a).await.unwrap());
    for missing in [
        store.read(&a.key).await.err(),
        store.size(&a.key).await.err(),
    ] {
        assert!(
            matches!(missing, Some(StoreError::NotFound(_))),
            "{missing:?}"
        );
    }
    assert!(matches!(
        store.read_from("jobs/j/t/1/none.png", 0).await.err(),
        Some(StoreError::NotFound(_))
    ));

    // Over the limit is refused before anything is stored.
    let over = store
        .put("jobs/j/t/1/big.bin", varied(MAX_BYTES as usize + 1))
        .await;
    assert!(
        matches!(over, Err(StoreError::TooLarge(MAX_BYTES))),
        "{over:?}"
    );

    // A large artifact goes up in parts and comes back byte for byte.
    let large = varied(2 * MULTIPART_ABOVE + 12_345);
    let stored = store
        .put("jobs/j/t/2/checkpoint.bin", large.clone())
        .await
        .unwrap();
    assert_eq!(stored.sha256, sha256_hex(&large));
    assert!(store.intact(&stored).await.unwrap());
    let (_, stream) = store.read_from(&stored.key, 1 << 20).await.unwrap();
    let tail: Vec<Bytes> = stream.map(|c| c.unwrap()).collect().await;
    assert_eq!(sha256_hex(&tail.concat()), sha256_hex(&large[1 << 20..]));
    stored.key
}

#[tokio::test]
async fn a_local_directory_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(dir.path().to_str().unwrap(), MAX_BYTES).unwrap();
    store.check().await.unwrap();
    conforms(&store).await;
}

#[tokio::test]
async fn s3_conforms_and_puts_large_artifacts_in_parts() {
    let server = S3Server::start().unwrap();
    let store = s3_store(&server, BUCKET).unwrap();
    store.check().await.unwrap();
    let large = conforms(&store).await;
    // Everything lives under the URL's prefix, and the large artifact was a multipart upload
    // of three parts (S3's ETag of a multipart object ends in its part count).
    let keys = server.keys("").unwrap();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k.starts_with("farm/jobs/")),
        "{keys:?}"
    );
    assert!(server
        .etag(&format!("farm/{large}"))
        .unwrap()
        .ends_with("-3"));
    let small = store.put("jobs/j/t/3/x.png", png(4, 4)).await.unwrap();
    assert!(!server
        .etag(&format!("farm/{}", small.key))
        .unwrap()
        .contains('-'));
}

#[tokio::test]
async fn a_missing_bucket_is_named_at_start() {
    let server = S3Server::start().unwrap();
    let store = s3_store(&server, "no-such-bucket").unwrap();
    let error = store.check().await.unwrap_err().to_string();
    assert!(
        error.starts_with("artifact store 's3://no-such-bucket/farm at http://127.0.0.1:")
            && error.contains("the bucket does not exist: create it, or fix the bucket in the store URL (NoSuchBucket)"),
        "{error}"
    );
}

#[tokio::test]
async fn refused_credentials_are_named_at_start() {
    let server = S3Server::start_with_user().unwrap();
    s3_store(&server, BUCKET).unwrap().check().await.unwrap();
    let with = |name: &str, value: &str| {
        let mut env = server.env();
        env.iter_mut().find(|(k, _)| k == name).unwrap().1 = value.to_string();
        ArtifactStore::open_with("s3://tessera/farm", MAX_BYTES, env).unwrap()
    };
    let cases = [
        (
            "AWS_ACCESS_KEY_ID",
            "AKIANOBODYKNOWS00000",
            "the store does not know the access key: check AWS_ACCESS_KEY_ID (InvalidAccessKeyId)",
        ),
        (
            "AWS_SECRET_ACCESS_KEY",
            "not-the-secret",
            "the secret key is wrong: check AWS_SECRET_ACCESS_KEY (SignatureDoesNotMatch)",
        ),
    ];
    for (name, value, said) in cases {
        let error = with(name, value).check().await.unwrap_err().to_string();
        assert!(error.contains(said), "{name}: {error}");
    }
}

#[tokio::test]
async fn an_endpoint_that_stops_answering_is_named_and_the_store_works_again_after() {
    let server = S3Server::start().unwrap();
    let store = s3_store(&server, BUCKET).unwrap();
    let kept = store.put("jobs/j/t/1/kept.png", png(8, 8)).await.unwrap();
    server.relay().cut();
    let started = std::time::Instant::now();
    let error = store
        .put("jobs/j/t/1/out.png", png(8, 8))
        .await
        .unwrap_err();
    let endpoint = format!(
        "artifact store: s3://tessera/farm at {}: ",
        server.endpoint()
    );
    assert!(matches!(error, StoreError::Backend(_)), "{error:?}");
    assert!(error.to_string().starts_with(&endpoint), "{error}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the error comes back within the retry budget, not after object_store's 3 minutes: {:?}",
        started.elapsed()
    );
    let read = store.read(&kept.key).await.unwrap_err().to_string();
    assert!(read.starts_with(&endpoint), "{read}");
    server.relay().restore();
    store.put("jobs/j/t/1/out.png", png(8, 8)).await.unwrap();
    assert!(
        store.intact(&kept).await.unwrap(),
        "nothing stored before the outage was lost"
    );
}
